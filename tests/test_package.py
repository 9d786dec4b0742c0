"""The installed package: its metadata's dependencies are requirements.txt, and the package
imports and runs its commands from outside the repository."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile

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


def test_the_wheel_ships_the_cpu_kernels_source(tmp_path):
    # `cpu_conv` compiles its C++ source on the user's machine, so the source must be in the
    # wheel (package data), not only in the checkout. Built from a copy: the build leaves
    # build/ and egg-info folders behind.
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "maffsrn_jax", src / "maffsrn_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert "maffsrn_jax/cpu_conv.cc" in zipfile.ZipFile(wheel).namelist()
