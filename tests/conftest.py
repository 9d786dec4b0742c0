"""Shared test fixtures. Multi-device tests set XLA_FLAGS in their own subprocesses."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The team's `shared/` folder beside the checkout (absent on users' machines)."""
    return REPO.parent / "shared"


def set5_dir() -> Path:
    """`../shared/benchmarks/Set5`, or skip the test with the reason."""
    d = shared_dir() / "benchmarks" / "Set5"
    if not (d / "HR").is_dir():
        pytest.skip(f"needs the Set5 benchmark images at {d} (only in the team's checkout)")
    return d


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
