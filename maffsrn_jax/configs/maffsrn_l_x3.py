"""MAFFSRN-L (8 FFGs) x3, the paper's recipe on DIV2K."""

from maffsrn_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.scale = 3
    c.model.n_ffgs = 8
    return c
