"""MAFFSRN super-resolution in JAX/Flax, interchangeable with the official PyTorch weights.

`from maffsrn_jax import MAFFSRN, jit_apply, load_pretrained`. They are imported on first use,
so the data modules (`imresize`, `image_io`, `data`) load without JAX, Flax or Orbax.
Importing the package or building a model sets no environment variable, hook, allocator
option or logging filter: `jit_apply(model)` carries the XLA options the model needs to the
program it compiles, and only the command-line entry points tune the process
(`xla_options.tune_process`).
"""

__all__ = ["MAFFSRN", "count_params", "jit_apply", "load_pretrained", "pretrained_names"]


def __getattr__(name: str):
    if name in ("MAFFSRN", "count_params"):
        from maffsrn_jax import models

        return getattr(models, name)
    if name == "pretrained_names":
        from maffsrn_jax.pretrained import pretrained_names

        return pretrained_names
    if name == "jit_apply":
        from maffsrn_jax.inference import jit_apply

        return jit_apply
    if name == "load_pretrained":
        from maffsrn_jax.convert import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'maffsrn_jax' has no attribute {name!r}")
