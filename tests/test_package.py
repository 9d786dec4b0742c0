"""The installed package: its metadata's dependencies and extras are the requirements*.txt
files, its six commands run from outside the repository and name themselves as typed, and a
missing optional package is one line naming the extra that adds it."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .conftest import REPO

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow


def _installed_requirements() -> list[str]:
    try:
        return importlib.metadata.requires("maffsrn-jax") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("maffsrn-jax is not installed (pip install -e . installs it)")


COMMANDS = ("train", "eval", "export", "upscale", "convert", "profile")
# Each extra's requirement files (pyproject.toml's [tool.setuptools.dynamic]).
EXTRA_FILES = {
    "export": ["requirements-export.txt"],
    "torch": ["requirements-torch.txt"],
    "tfds": ["requirements-tfds.txt"],
    "dev": ["requirements-export.txt", "requirements-torch.txt", "requirements-tfds.txt",
            "requirements-dev.txt"],
}


def _file_requirements(*names: str) -> set[str]:
    out = set()
    for name in names:
        for line in (REPO / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                out.add(str(Requirement(line)))
    return out


def _metadata_requirements(extra: str | None) -> set[str]:
    """The installed metadata's requirements of `extra` (None: the base install)."""
    out = set()
    for r in _installed_requirements():
        req = Requirement(r)
        # setuptools writes an extra's requirement as "<its own marker> and extra == 'NAME'".
        parts = str(req.marker).split(" and ") if req.marker else []
        extras = [p for p in parts if p.startswith("extra ==")]
        rest = [p for p in parts if not p.startswith("extra ==")]
        if extras != ([f'extra == "{extra}"'] if extra else []):
            continue
        req.marker = None
        out.add(f"{req}; {' and '.join(rest)}" if rest else str(req))
    return out


def test_metadata_dependencies_are_requirements_txt():
    assert _metadata_requirements(None) == _file_requirements("requirements.txt")


@pytest.mark.parametrize("extra", sorted(EXTRA_FILES))
def test_metadata_extras_are_their_requirements_files(extra):
    want = {str(Requirement(r)) for r in _file_requirements(*EXTRA_FILES[extra])}
    got = {str(Requirement(r)) for r in _metadata_requirements(extra)}
    assert got == want


def test_optional_packages_stay_out_of_the_base_install():
    base = {Requirement(r).name for r in _file_requirements("requirements.txt")}
    for heavy in ("torch", "tensorflow", "tensorflow-cpu", "tensorflow-datasets", "onnx",
                  "onnxruntime", "ai-edge-litert"):
        assert heavy not in base


def test_the_six_commands_are_installed():
    _installed_requirements()
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
               if ep.value.startswith("maffsrn_jax.")}
    assert scripts == {f"maffsrn-{c}": f"maffsrn_jax.{c}:main" for c in COMMANDS}


def test_commands_run_from_another_directory(tmp_path):
    _installed_requirements()
    code = ("import maffsrn_jax, maffsrn_jax.configs.default as d; "
            "from maffsrn_jax import MAFFSRN; print(d.get_config().model.scale)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_help_names_the_command_as_typed(tmp_path, command):
    _installed_requirements()
    script = Path(sys.executable).parent / f"maffsrn-{command}"
    if not script.exists():
        pytest.skip(f"{script.name} is not installed (pip install -e . installs it)")
    for argv, typed in ([str(script)], f"maffsrn-{command}"), (
            [sys.executable, "-m", f"maffsrn_jax.{command}"], f"python -m maffsrn_jax.{command}"):
        out = subprocess.run([*argv, "--help"], cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"usage: {typed} "), out.stdout[:200]


def test_train_finds_shipped_configs_by_name(tmp_path, monkeypatch):
    from maffsrn_jax import train

    monkeypatch.chdir(tmp_path)  # no checkout's configs/ here

    shipped = Path(train.__file__).parent / "configs"
    assert "quickstart" in train.shipped_config_names()
    assert "default" not in train.shipped_config_names()
    mine = tmp_path / "quickstart.py"
    mine.write_text("")
    args = ["maffsrn-train", "--config", "quickstart", "--workdir", "w"]
    assert train.resolve_config_arg(args)[2] == str(shipped / "quickstart.py")
    assert train.resolve_config_arg(["x", "--config=configs/maffsrn_x2.py:4"])[1] == (
        f"--config={shipped / 'maffsrn_x2.py'}:4")
    # An existing file of the same name wins; an unknown name is left for the one-line error.
    assert train.resolve_config_arg(["x", f"--config={mine}"]) == ["x", f"--config={mine}"]
    assert train.resolve_config_arg(["x", "--config", "nope"]) == ["x", "--config", "nope"]


def _one_error_line(capsys, extra: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert err[0].endswith(f"pip install 'maffsrn-jax[{extra}]'"), err[0]
    return err[0]


@pytest.mark.parametrize(("fmt", "missing"), [("onnx", "torch"), ("onnx", "onnxruntime"),
                                              ("tflite", "tensorflow")])
def test_export_without_its_extra_is_one_line(tmp_path, monkeypatch, capsys, fmt, missing):
    from maffsrn_jax import export

    monkeypatch.setitem(sys.modules, missing, None)  # what an uninstalled package looks like
    rc = export.main(["--checkpoint", "anything", "--format", fmt,
                      "--output", str(tmp_path / f"m.{fmt}")])
    assert rc == 2
    assert f"{fmt} export needs {missing}" in _one_error_line(capsys, "export")
    assert list(tmp_path.iterdir()) == []


def test_pt_files_without_torch_are_one_line(tmp_path, monkeypatch, capsys):
    from maffsrn_jax import convert

    monkeypatch.setitem(sys.modules, "torch", None)
    (tmp_path / "model.pt").write_bytes(b"not read")
    rc = convert.main(["torch-to-flax", str(tmp_path / "model.pt"), str(tmp_path / "out")])
    assert rc == 2
    assert "model.pt: reading a PyTorch file needs torch" in _one_error_line(capsys, "torch")


def test_exported_models_without_their_runtime_are_one_line(tmp_path, monkeypatch, capsys):
    from maffsrn_jax import upscale

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"not read")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    rc = upscale.main(["--checkpoint", str(tmp_path / "m.onnx"), "--input",
                       str(tmp_path / "in.png"), "--output", str(tmp_path / "out.png")])
    assert rc == 2
    assert "m.onnx: running an ONNX model needs onnxruntime" in _one_error_line(capsys, "export")


def test_tfds_source_without_tfds_is_one_error(tmp_path, monkeypatch):
    from maffsrn_jax import data
    from maffsrn_jax.configs import quickstart
    from maffsrn_jax.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    cfg = quickstart.get_config().data
    cfg.source = "tfds"
    cfg.cache_dir = str(tmp_path / "cache")
    with pytest.raises(MissingExtraError, match=r"pip install 'maffsrn-jax\[tfds\]'$"):
        data.get_datasets(cfg, 2)


def test_the_wheel_ships_the_cpu_kernels_source(tmp_path):
    # `cpu_conv` compiles its C++ source on the user's machine, so the source must be in the
    # wheel (package data), not only in the checkout. Built from a copy: the build leaves
    # build/ and egg-info folders behind.
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for path in [REPO / "pyproject.toml", REPO / "README.md", *REPO.glob("requirements*.txt")]:
        shutil.copy(path, src / path.name)
    shutil.copytree(REPO / "maffsrn_jax", src / "maffsrn_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert "maffsrn_jax/cpu_conv.cc" in z.namelist()
        (metadata,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        extras = {ln.split(": ", 1)[1] for ln in z.read(metadata).decode().splitlines()
                  if ln.startswith("Provides-Extra: ")}
    assert extras == set(EXTRA_FILES)
