"""The optional parts of the package, each a pip extra, and the one-line error for a missing one.

    pip install 'maffsrn-jax[export]'   # ONNX / TFLite export, running .onnx and .tflite files
    pip install 'maffsrn-jax[torch]'    # reading and writing PyTorch .pt/.pth files
    pip install 'maffsrn-jax[tfds]'     # the `tfds` training data source

The base install trains on folders, evaluates, upscales and exports StableHLO.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from maffsrn_jax.errors import Error

EXTRAS = ("export", "torch", "tfds")


class MissingExtraError(Error):
    """An optional package is not installed; the message names the pip extra that adds it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Imports `module`, or raises MissingExtraError naming `pip install 'maffsrn-jax[extra]'`.

    Args:
        module: the import name, e.g. "onnxruntime" or "tensorflow_datasets".
        extra: one of EXTRAS.
        purpose: what needs it, as the start of the message ("ONNX export").
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; expected one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        # Only a missing package is the user's to fix; a module of ours failing to import is a
        # bug and keeps its traceback.
        if e.name is None or e.name.startswith("maffsrn_jax"):
            raise
        raise MissingExtraError(
            f"{purpose} needs {e.name.split('.')[0]}, which is not installed: "
            f"pip install 'maffsrn-jax[{extra}]'"
        ) from None
