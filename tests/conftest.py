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
