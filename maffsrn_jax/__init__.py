"""MAFFSRN super-resolution in JAX/Flax, interchangeable with the official PyTorch weights."""

from maffsrn_jax.models import MAFFSRN, count_params

__all__ = ["MAFFSRN", "count_params", "load_pretrained"]


def __getattr__(name: str):
    # Loading checkpoints pulls in Orbax (slow to import); only pay for it when used.
    if name == "load_pretrained":
        from maffsrn_jax.convert import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'maffsrn_jax' has no attribute {name!r}")
