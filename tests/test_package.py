"""The installed package: its metadata's dependencies are requirements.txt, and the package
imports and runs its commands from outside the repository."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from .conftest import REPO


def _installed_requirements() -> list[str]:
    try:
        return importlib.metadata.requires("maffsrn-jax") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("maffsrn-jax is not installed (pip install -e . installs it)")


def test_metadata_dependencies_are_requirements_txt():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    wanted = {str(Requirement(ln)) for ln in lines if ln.strip() and not ln.startswith("#")}
    installed = {str(Requirement(r)) for r in _installed_requirements()
                 if "extra ==" not in r}
    assert installed == wanted


def test_commands_run_from_another_directory(tmp_path):
    _installed_requirements()
    code = ("import maffsrn_jax, maffsrn_jax.configs.default as d; "
            "from maffsrn_jax import MAFFSRN; print(d.get_config().model.scale)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr
    for command in ("upscale", "convert"):
        out = subprocess.run([sys.executable, "-m", f"maffsrn_jax.{command}", "--help"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage:" in out.stdout, out.stderr
