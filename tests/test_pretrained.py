"""The shipped weights (`maffsrn_jax.pretrained`) and the training set's file list (`train491`)."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from maffsrn_jax import pretrained, train
from maffsrn_jax.checkpoints import CheckpointError
from maffsrn_jax.data import train491
from maffsrn_jax.data.cache import DataError
from maffsrn_jax.imresize import imresize, modcrop

SET5_BIRD = Path(__file__).parent / "data" / "Set5" / "HR" / "bird.png"
# A trained model must beat bicubic clearly on a Set5 image; MAFFSRN trained for the
# shipped weights is 2-4 dB above it, an untrained or scrambled one is below it.
MIN_GAIN_DB = 1.0


def test_ships_three_scales():
    assert pretrained.pretrained_names() == ["maffsrn_x2", "maffsrn_x3", "maffsrn_x4"]
    import maffsrn_jax

    assert maffsrn_jax.pretrained_names() == pretrained.pretrained_names()


@pytest.mark.parametrize("name", pretrained.pretrained_names())
def test_manifest_checksums(name):
    entry = json.loads(pretrained.MANIFEST.read_text())["weights"][name]
    data = (pretrained.WEIGHTS_DIR / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert entry["file"] == f"{name}.safetensors"
    assert entry["model"]["scale"] == int(name[-1])


@pytest.mark.parametrize("name", [n for n in train.shipped_config_names()
                                  if n.startswith("pretrained_x")])
def test_pretrained_configs_continue_the_shipped_weights_of_their_scale(name):
    """A stage's scale is its name's, and a later stage starts from the shipped weights of
    that scale (its docstring's command), so a stage copied for another scale cannot train
    a x4 model from x3 weights."""
    module = importlib.import_module(f"maffsrn_jax.configs.{name}")
    config = module.get_config()
    scale = int(name[len("pretrained_x")])
    assert config.model.scale == scale
    assert config.data.dir == "data/train491"
    if "_stage" in name:
        assert config.init_from == f"maffsrn_x{scale}"
        assert f"--config {name} " in module.__doc__
    assert 0 < config.lr_decay_steps < config.num_train_steps


@pytest.mark.parametrize("name", pretrained.pretrained_names())
@pytest.mark.slow
def test_loads_with_official_layout_and_beats_bicubic(name):
    from safetensors.numpy import load_file

    from maffsrn_jax import inference, metrics
    from maffsrn_jax.convert import flax_to_torch, load_pretrained
    from maffsrn_jax.image_io import load_image
    from maffsrn_jax.models import MAFFSRN

    model, variables = load_pretrained(name)
    scale = int(name[-1])
    assert (model.scale, model.n_ffgs) == (scale, 4)
    # The file itself is float32 in the official key layout (what the PyTorch model loads).
    raw = load_file(str(pretrained.pretrained_path(name)))
    import jax

    fresh = MAFFSRN(scale=scale).init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    official = flax_to_torch(MAFFSRN(scale=scale), fresh)
    assert {k: v.shape for k, v in raw.items()} == {k: v.shape for k, v in official.items()}
    assert {v.dtype for v in raw.values()} == {np.dtype(np.float32)}
    assert "head.0.weight_g" in raw

    hr = modcrop(load_image(SET5_BIRD), scale)
    lr = imresize(hr, 1 / scale, output_shape=(hr.shape[0] // scale, hr.shape[1] // scale))
    sr = metrics.quantize(inference.upscale_array(model, variables, lr.astype(np.float32) / 255))
    bicubic = imresize(lr, scale, output_shape=hr.shape[:2])
    gain = metrics.psnr(sr, hr, scale=scale) - metrics.psnr(bicubic, hr, scale=scale)
    assert gain > MIN_GAIN_DB, f"{name}: {gain:.2f} dB over bicubic"


@pytest.fixture
def weights_copy(tmp_path, monkeypatch):
    """The shipped weights in a temporary folder that the module reads instead."""
    folder = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, folder)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(pretrained, "MANIFEST", folder / "manifest.json")
    return folder


def test_damaged_file_is_one_line_error(weights_copy):
    from maffsrn_jax.convert import load_pretrained

    name = pretrained.pretrained_names()[0]
    path = weights_copy / f"{name}.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(name)
    message = str(e.value)
    assert "\n" not in message and "SHA-256" in message and str(path) in message


def test_missing_file_and_unknown_name(weights_copy):
    name = pretrained.pretrained_names()[-1]
    (weights_copy / f"{name}.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        pretrained.pretrained_path(name)
    with pytest.raises(CheckpointError, match="no such shipped weights"):
        pretrained.pretrained_path("maffsrn_x5")


def test_existing_path_wins_over_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = pretrained.pretrained_names()[0]
    (tmp_path / name).mkdir()
    assert pretrained.resolve(name) == Path(name)
    assert pretrained.resolve("elsewhere/" + name) == Path("elsewhere/" + name)


def _fake_repos(root: Path) -> tuple[Path, Path]:
    """Tiny stand-ins for the two repositories, with a B100 (val) image that must stay out."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def image(path: Path, fmt: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path, fmt)

    t91, bsds = root / "dcscn", root / "BSDS500"
    image(t91 / "data/yang91/t1.bmp", "BMP")
    image(t91 / "data/yang91/tt2.bmp", "BMP")
    image(bsds / "BSDS500/data/images/train/100075.jpg", "JPEG")
    image(bsds / "BSDS500/data/images/test/2018.jpg", "JPEG")
    image(bsds / "BSDS500/data/images/val/3096.jpg", "JPEG")
    (bsds / "BSDS500/data/images/train/Thumbs.db").write_bytes(b"not an image")
    return t91, bsds


def test_train491_list_and_build(tmp_path):
    t91, bsds = _fake_repos(tmp_path)
    listing = tmp_path / "list.sha256"
    assert train491.write_list(t91, bsds, listing) == 4
    expected = train491.read_list(listing)
    assert sorted(expected) == [
        "bsds500_test_2018.jpg", "bsds500_train_100075.jpg", "t91_t1.bmp", "t91_tt2.bmp"]
    out = tmp_path / "train"
    assert train491.build(t91, bsds, out, expected) == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert (out / "t91_t1.bmp").read_bytes() == (t91 / "data/yang91/t1.bmp").read_bytes()
    assert train491.build(t91, bsds, out, expected) == 0  # a rerun keeps what is right

    (t91 / "data/yang91/t1.bmp").write_bytes(b"changed")
    with pytest.raises(DataError, match="t1.bmp: checksum differs"):
        train491.build(t91, bsds, out, expected)
    (t91 / "data/yang91/t1.bmp").unlink()
    with pytest.raises(DataError, match="1 listed image"):
        train491.build(t91, bsds, out, expected)
    with pytest.raises(DataError, match="--bsds500"):
        train491.build(t91, tmp_path / "nowhere", out, expected)


def test_train491_shipped_list():
    names = train491.read_list()
    assert len(names) == 491
    assert sum(n.startswith("t91_") for n in names) == 91
    assert sum(n.startswith("bsds500_train_") for n in names) == 200
    assert sum(n.startswith("bsds500_test_") for n in names) == 200
    assert all(len(d) == 64 for d in names.values())


def test_model_card_curves_continue_a_stage(tmp_path):
    from benchmarks.model_card import read_curves

    records = [{"step": 10, "val_psnr": 30.0}, {"step": 20, "loss": 1.0},
               {"step": 20, "val_psnr": 31.0}]
    (tmp_path / "x2").mkdir()
    (tmp_path / "x2" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert read_curves(tmp_path, [2]) == {"x2": [[10, 30.0], [20, 31.0]]}
    stage1 = {"x2": [[500, 29.0]], "x4": [[100, 25.0]]}
    assert read_curves(tmp_path, [2], after=stage1) == {
        "x2": [[500, 29.0], [510, 30.0], [520, 31.0]], "x4": [[100, 25.0]]}
