"""MAFFSRN-L (8 FFGs) x4, the paper's recipe on DIV2K."""

from maffsrn_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.scale = 4
    c.model.n_ffgs = 8
    return c
