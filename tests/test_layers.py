"""One-way layers: the library never imports the checkout's development harnesses
(`benchmarks/`), and the package that setuptools builds does not contain them."""

from __future__ import annotations

import ast
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = None

import pytest

from .conftest import REPO


def _imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_library_never_imports_the_harnesses():
    offenders = {}
    for path in sorted((REPO / "maffsrn_jax").rglob("*.py")):
        bad = sorted(
            m for m in _imported_modules(path)
            if m.split(".")[0] in ("benchmarks", "tests") or m.startswith("maffsrn_jax.tools")
        )
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert offenders == {}
    assert not (REPO / "maffsrn_jax" / "tools").exists()


def test_the_built_package_leaves_the_harnesses_out():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    setuptools = pytest.importorskip("setuptools")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(where=str(REPO), include=include)
    assert "maffsrn_jax" in packages
    assert not [p for p in packages if p.split(".")[0] in ("benchmarks", "tests")]
    scripts = config["project"]["scripts"]
    assert scripts["maffsrn-profile"] == "maffsrn_jax.profile:main"
    assert all(target.startswith("maffsrn_jax.") for target in scripts.values())


def test_profile_is_a_module_of_the_package_and_faults_train_the_checkout():
    from benchmarks import faults
    from maffsrn_jax import profile

    assert profile.__name__ == "maffsrn_jax.profile" and callable(profile.main)
    assert faults.REPO == REPO and (faults.REPO / "train.py").is_file()
