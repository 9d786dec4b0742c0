"""`maffsrn_jax.data` under its earlier name, for scripts that import it from here."""

from maffsrn_jax.configs.default import data_config as default_data_config
from maffsrn_jax.data import *  # noqa: F403
from maffsrn_jax.data import __all__ as _data_names
from maffsrn_jax.files import IMAGE_EXTENSIONS

__all__ = [*_data_names, "IMAGE_EXTENSIONS", "default_data_config"]
