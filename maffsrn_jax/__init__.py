"""MAFFSRN super-resolution in JAX/Flax, interchangeable with the official PyTorch weights.

`from maffsrn_jax import MAFFSRN, load_pretrained`. Both are imported on first use, so the
data modules (`imresize`, `image_io`, `input_pipeline`) load without JAX, Flax or Orbax.

Importing the package puts its XLA:CPU option in XLA_FLAGS unless the user decides
otherwise (`xla_options.default_xla_flags`), so any jit of the model compiles the fast way.
"""

from maffsrn_jax import xla_options as _xla_options

XLA_FLAGS_STATUS = _xla_options.default_xla_flags()

__all__ = ["MAFFSRN", "XLA_FLAGS_STATUS", "count_params", "load_pretrained"]


def __getattr__(name: str):
    if name in ("MAFFSRN", "count_params"):
        from maffsrn_jax import models

        return getattr(models, name)
    if name == "load_pretrained":
        from maffsrn_jax.convert import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'maffsrn_jax' has no attribute {name!r}")
