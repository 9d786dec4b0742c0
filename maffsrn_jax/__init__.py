"""MAFFSRN super-resolution in JAX/Flax, interchangeable with the official PyTorch weights.

`from maffsrn_jax import MAFFSRN, load_pretrained`. Both are imported on first use, so the
data modules (`imresize`, `image_io`, `input_pipeline`) load without JAX, Flax or Orbax.
"""

__all__ = ["MAFFSRN", "count_params", "load_pretrained"]


def __getattr__(name: str):
    if name in ("MAFFSRN", "count_params"):
        from maffsrn_jax import models

        return getattr(models, name)
    if name == "load_pretrained":
        from maffsrn_jax.convert import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'maffsrn_jax' has no attribute {name!r}")
