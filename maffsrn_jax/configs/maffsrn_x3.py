"""MAFFSRN x3, the paper's recipe on DIV2K (set --config.data.dir to your DIV2K root)."""

from maffsrn_jax.configs import default


def get_config():
    c = default.get_config()
    c.model.scale = 3
    return c
