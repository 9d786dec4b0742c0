"""Shared test fixtures. Multi-device tests set XLA_FLAGS in their own subprocesses."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# XLA:CPU compiles are most of this suite's time, and many tests (and the train.py, eval.py
# and profile processes they start, which inherit the environment) compile the same tiny
# programs again. A persistent compilation cache private to this session compiles each once.
# Set here, before any test imports jax; a cache the caller configured is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="maffsrn-jax-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def set5_dir() -> Path:
    """The Set5 benchmark shipped with the tests: `HR/` and `LR_bicubic/X{2,3,4,8}/`
    (tests/data/README.md names its source)."""
    return REPO / "tests" / "data" / "Set5"


def torch_reference(scale: int = 2, n_ffgs: int = 1, seed: int = 0, **arch):
    """The PyTorch reference MAFFSRN with its weight-norm gains (x U[0.5, 1.5]) and lambdas
    (U[0.25, 1.5]) moved off their init, so parity tests exercise every parameter."""
    import torch

    from maffsrn_jax import torch_model

    torch.manual_seed(seed)
    net = torch_model.MAFFSRN(scale, n_ffgs=n_ffgs, **arch).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".weight_g"):
                p.mul_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=gen))
            elif name.endswith(".scale"):
                p.copy_(torch.empty(p.shape).uniform_(0.25, 1.5, generator=gen))
    return net


def flax_forward(model, variables: dict, x: np.ndarray) -> np.ndarray:
    """NHWC numpy in and out. Eager on purpose: op-by-op dispatch reuses each compiled conv
    across the many small model variants the tests build, where jit would compile every
    variant whole (seconds each)."""
    import jax.numpy as jnp

    return np.asarray(model.apply(variables, jnp.asarray(x)))


def torch_forward(net, x: np.ndarray) -> np.ndarray:
    """NHWC numpy in and out, NCHW inside."""
    import torch

    with torch.no_grad():
        y = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    return y.numpy().transpose(0, 2, 3, 1)
