"""maffsrn-eval, maffsrn-upscale and maffsrn_jax.inference: scores, layouts, tiling, ensemble,
odd images and every bad input through the CLIs (as subprocesses: one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from PIL import Image
from safetensors.numpy import save_file

from maffsrn_jax import convert, evaluation, image_io, inference, metrics, upscale
from maffsrn_jax import eval as eval_cli
from maffsrn_jax.imresize import imresize
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO, set5_dir

# The Set5 bicubic baseline of the literature (facts sheet, section 6): (PSNR, SSIM).
SET5_BICUBIC = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


@pytest.fixture(scope="module")
def tiny():
    """The tiny test model, MAFFSRN x2 with one FFG, randomly initialised."""
    model = MAFFSRN(scale=2, n_ffgs=1)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    return model, jax.device_get(variables)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny):
    """.safetensors checkpoints of the tiny x2 model, a x4 one, and a corrupt file."""
    d = tmp_path_factory.mktemp("ckpt")
    state = convert.flax_to_torch(*tiny)
    save_file(state, d / "x2.safetensors")
    # x4: the same weights with tails of 3 * 4^2 output channels (cheaper than another init).
    rng = np.random.default_rng(0)
    x4 = {k: v if not k.startswith("tail.tail_k") else
          rng.normal(size=(48, *v.shape[1:])).astype(v.dtype) * 0.01 for k, v in state.items()}
    save_file(x4, d / "x4.safetensors")
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return d


def _photo(h: int, w: int) -> np.ndarray:
    """A real photograph crop, uint8 [h, w, 3]."""
    return np.ascontiguousarray(skimage.data.chelsea()[40 : 40 + h, 60 : 60 + w])


def _psnr_float(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2)))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- inference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(1, 1), (5, 7), (13, 13), (4, 20)])
@pytest.mark.slow
def test_model_fn_any_size_pads_and_crops(tiny, h, w):
    model, variables = tiny
    x = _photo(h, w).astype(np.float32) / 255
    y = inference.model_fn(model, variables)(x)
    assert y.shape == (2 * h, 2 * w, 3) and y.dtype == np.float32
    # Same as running the model on the centred edge-padded input and cropping.
    ph, pw = max(0, 13 - h), max(0, 13 - w)
    xp = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="edge")
    ref = np.asarray(jax.jit(model.apply)(variables, xp[None])[0])
    ref = ref[2 * (ph // 2) : 2 * (ph // 2 + h), 2 * (pw // 2) : 2 * (pw // 2 + w)]
    np.testing.assert_allclose(y, ref, atol=1e-5)


@pytest.mark.parametrize("size, tile, overlap", [(10, 16, 4), (16, 16, 4), (17, 16, 4),
                                                  (100, 32, 8), (333, 64, 16), (64, 20, 0)])
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = inference.tile_starts(size, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + tile == max(size, tile)
    ends = [s + tile for s in starts]
    assert all(e - s >= overlap for s, e in zip(starts[1:], ends[:-1], strict=True))
    # The fewest tiles: one fewer could not cover `size` with the required overlaps.
    assert (len(starts) - 1) * (tile - overlap) + overlap < max(size, tile + 1)


def _nearest(x: np.ndarray, s: int = 3) -> np.ndarray:
    return np.repeat(np.repeat(x, s, axis=0), s, axis=1)


def test_tiles_blend_to_a_partition_of_unity():
    """With a pixel-local fn, tiling must reproduce the untiled output exactly."""
    x = np.random.default_rng(0).random((50, 37, 3)).astype(np.float32)
    shapes = []

    def fn(t):
        shapes.append(t.shape)
        return _nearest(t)

    y = inference.upscale_tiled(fn, x, scale=3, tile=16, overlap=5)
    np.testing.assert_allclose(y, _nearest(x), rtol=1e-6)
    assert set(shapes) == {(16, 16, 3)}  # One compiled shape, edge tiles included.
    # A side shorter than the tile is not split.
    shapes.clear()
    inference.upscale_tiled(fn, x[:10], scale=3, tile=16, overlap=5)
    assert set(shapes) == {(10, 16, 3)}


def test_bad_tile_settings_raise():
    x = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(ValueError, match="tile"):
        inference.upscale_tiled(_nearest, x, scale=3, tile=8, overlap=2)
    with pytest.raises(ValueError, match="overlap"):
        inference.upscale_tiled(_nearest, x, scale=3, tile=20, overlap=10)


@pytest.mark.slow
def test_tiled_matches_untiled_on_a_photo(tiny):
    model, variables = tiny
    x = _photo(96, 120).astype(np.float32) / 255
    full = inference.upscale_array(model, variables, x)
    tiled = inference.upscale_array(model, variables, x, tile=48, overlap=16)
    assert tiled.shape == full.shape
    assert _psnr_float(tiled, full) >= 45.0


@pytest.mark.slow
def test_default_tiling_matches_untiled_on_a_large_photo(tiny):
    model, variables = tiny
    x = skimage.data.chelsea().astype(np.float32) / 255  # 300 x 451: two default tiles.
    full = inference.upscale_array(model, variables, x)
    tiled = inference.upscale_array(model, variables, x, tile=inference.DEFAULT_TILE)
    assert _psnr_float(tiled, full) >= 45.0


@pytest.mark.slow
def test_inference_cli_reports_tiling_error(tmp_path, checkpoints, capsys):
    image_io.save_image(tmp_path / "photo.png", _photo(40, 56))
    rc = inference.main(["--checkpoint", str(checkpoints / "x2.safetensors"), "--tile", "32",
                         "--overlap", "8", str(tmp_path / "photo.png")])
    out = capsys.readouterr().out.strip()
    assert rc == 0 and out.startswith(f"{tmp_path / 'photo.png'} 40x56 tile 32/8: ")
    assert float(out.split(": ")[1].split(" dB")[0]) >= 40.0


def _dihedral_reference(fn, x: np.ndarray) -> np.ndarray:
    """Mean of the 8 outputs, built independently of inference.py from rot90 and fliplr."""
    outs = []
    for k in range(4):
        outs.append(np.rot90(fn(np.ascontiguousarray(np.rot90(x, k))), -k))
        flipped = np.ascontiguousarray(np.rot90(np.fliplr(x), k))
        outs.append(np.fliplr(np.rot90(fn(flipped), -k)))
    return np.mean(outs, axis=0)


@pytest.mark.slow
def test_self_ensemble_is_the_mean_of_the_eight_inverted_outputs(tiny):
    model, variables = tiny
    x = _photo(15, 21).astype(np.float32) / 255
    fn = inference.model_fn(model, variables)
    ours = inference.upscale_array(model, variables, x, self_ensemble=True)
    np.testing.assert_allclose(ours, _dihedral_reference(fn, x), atol=1e-6)
    # The model is not flip-equivariant, so the ensemble really differs from one pass.
    assert np.abs(ours - fn(x)).max() > 1e-4
    # An equivariant fn is its own ensemble.
    np.testing.assert_allclose(inference.ensemble_x8(_nearest, x), _nearest(x), atol=1e-7)


# --- upscale_image: odd images ----------------------------------------------------------------


def test_upscale_image_gray_rgba_and_16bit(tiny):
    model, variables = tiny
    rgb = _photo(14, 17)
    gray = rgb[..., 1]
    out = upscale.upscale_image(model, variables, gray)
    sr = inference.upscale_array(model, variables, np.repeat(gray[..., None], 3, 2) / 255)
    assert out.shape == (28, 34) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, metrics.quantize(sr.mean(axis=2)))

    alpha = np.linspace(0, 255, 14 * 17).reshape(14, 17).astype(np.uint8)
    out = upscale.upscale_image(model, variables, np.dstack([rgb, alpha]))
    assert out.shape == (28, 34, 4)
    np.testing.assert_array_equal(out[..., 3], imresize(alpha, 2, output_shape=(28, 34)))
    np.testing.assert_array_equal(out[..., :3], upscale.upscale_image(model, variables, rgb))

    # 16 bits: the low byte must reach the model (an 8-bit path would lose it).
    deep = rgb.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, rgb.shape)
    out = upscale.upscale_image(model, variables, deep.astype(np.uint16))
    assert out.dtype == np.uint16 and out.shape == (28, 34, 3)
    sr = inference.upscale_array(model, variables, deep.astype(np.float32) / 65535)
    np.testing.assert_array_equal(out, metrics.quantize(sr, np.uint16))


# --- eval.py ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_bicubic_bar(tmp_path, scale):
    """Both layouts: HR only (LR made here) and the benchmark's own LR files."""
    d = set5_dir()
    out = tmp_path / "scores.json"
    rc = eval_cli.main(["--bicubic", "--scale", str(scale), "--data", f"hr={d / 'HR'}",
                        "--data", f"benchmark={d}", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    psnr, ssim = SET5_BICUBIC[scale]
    for name in ("hr", "benchmark"):
        assert report[name]["scale"] == scale
        assert len(report[name]["images"]) == 5
        assert report[name]["psnr"] == pytest.approx(psnr, abs=0.02)
        assert report[name]["ssim"] == pytest.approx(ssim, abs=0.0012)


def _hr_folder(d: Path, sizes=((40, 48), (33, 26))) -> Path:
    d.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        image_io.save_image(d / f"img{i}.png", _photo(h, w))
    return d


def _benchmark_folder(d: Path, scale: int) -> Path:
    _hr_folder(d / "HR")
    (d / "LR_bicubic" / f"X{scale}").mkdir(parents=True)
    for p in sorted((d / "HR").iterdir()):
        hr = image_io.load_image(p)
        h, w = hr.shape[0] // scale, hr.shape[1] // scale
        lr = imresize(hr[: h * scale, : w * scale], 1 / scale, output_shape=(h, w))
        image_io.save_image(d / "LR_bicubic" / f"X{scale}" / f"{p.stem}x{scale}.png", lr)
    return d


def test_layout_detection(tmp_path):
    flat = _hr_folder(tmp_path / "flat")
    assert [s.lr for s in evaluation.find_samples(flat, 3)] == [None, None]
    hr_only = _hr_folder(tmp_path / "hr_only" / "HR").parent
    assert [s.name for s in evaluation.find_samples(hr_only, 3)] == ["img0", "img1"]
    bench = _benchmark_folder(tmp_path / "bench", 3)
    samples = evaluation.find_samples(bench, 3)
    assert [s.lr.name for s in samples] == ["img0x3.png", "img1x3.png"]
    # Both layouts give the same LR here (it was made the same way): same scores.
    scores = [evaluation.evaluate(evaluation.bicubic_upscaler(3), evaluation.find_samples(d, 3), 3)
              for d in (flat, bench)]
    assert scores[0] == scores[1]
    with pytest.raises(evaluation.EvalError, match="LR_bicubic/X2"):
        evaluation.find_samples(bench, 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(evaluation.EvalError, match="unknown dataset layout"):
        evaluation.find_samples(tmp_path / "empty", 2)


def test_benchmark_layout_checks_lr_files(tmp_path):
    bench = _benchmark_folder(tmp_path / "bench", 2)
    lr = bench / "LR_bicubic" / "X2" / "img1x2.png"
    lr.unlink()
    with pytest.raises(evaluation.EvalError, match="img1x2.png"):
        evaluation.find_samples(bench, 2)
    image_io.save_image(lr, np.zeros((5, 5, 3), np.uint8))
    (sample,) = [s for s in evaluation.find_samples(bench, 2) if s.name == "img1"]
    with pytest.raises(evaluation.EvalError, match="img1x2.png: LR is 5x5"):
        evaluation.load_pair(sample, 2)


@pytest.mark.slow
def test_eval_checkpoint_json_and_saved_images(tmp_path, checkpoints):
    data = _hr_folder(tmp_path / "data")
    out = tmp_path / "scores.json"
    rc = eval_cli.main(["--checkpoint", str(checkpoints / "x2.safetensors"),
                        "--data", f"tiny={data}", "--json", str(out),
                        "--save-images", str(tmp_path / "sr")])
    assert rc == 0
    report = json.loads(out.read_text())
    assert list(report) == ["tiny"]
    entry = report["tiny"]
    assert set(entry) == {"scale", "psnr", "ssim", "images"} and entry["scale"] == 2
    assert [set(r) for r in entry["images"]] == [{"name", "psnr", "ssim"}] * 2
    assert entry["psnr"] == pytest.approx(np.mean([r["psnr"] for r in entry["images"]]))
    for r in entry["images"]:
        sr = image_io.load_image(tmp_path / "sr" / "tiny" / "X2" / f"{r['name']}.png")
        hr = image_io.load_image(data / f"{r['name']}.png")
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        assert r["psnr"] == metrics.psnr(sr, hr, scale=2)
        assert r["ssim"] == metrics.ssim(sr, hr, scale=2)


def test_eval_rejects_bad_tiling_before_scoring(tmp_path, checkpoints, capsys):
    data = _hr_folder(tmp_path / "data")
    rc = eval_cli.main(["--checkpoint", str(checkpoints / "x2.safetensors"), "--scale", "2",
                        "--data", f"d={data}", "--tile", "40"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("error: --tile 40 --overlap 32: overlap must be in [0, tile // 2)")


def test_write_json_atomic_leaves_nothing_on_failure(tmp_path):
    from maffsrn_jax.files import write_json_atomic

    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


# --- bad input through the CLIs (subprocesses) -----------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    png = d / "good.png"
    image_io.save_image(png, _photo(20, 24))
    (d / "truncated.png").write_bytes(png.read_bytes()[:60])
    (d / "notimage.png").write_text("hello, I am text\n")
    return d


def _dataset_with(tmp_path: Path, bad: Path) -> Path:
    d = _hr_folder(tmp_path / "data")
    (d / "zz_bad.png").write_bytes(bad.read_bytes())
    return d


@pytest.mark.parametrize("bad", ["truncated.png", "notimage.png"])
def test_eval_cli_bad_image_is_listed_and_the_rest_scored(tmp_path, bad_files, bad):
    data = _dataset_with(tmp_path, bad_files / bad)
    out = tmp_path / "scores.json"
    proc = run_cli("eval.py", "--bicubic", "--scale", "2", "--data", f"d={data}", "--json", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "zz_bad.png" in lines[0]
    assert lines[1] == "error: 1 of 3 images could not be scored (listed above)"
    report = json.loads(out.read_text())["d"]
    assert [r["name"] for r in report["images"]] == ["img0", "img1"]
    assert len(report["failed"]) == 1 and "zz_bad.png" in report["failed"][0]
    good = evaluation.evaluate(evaluation.bicubic_upscaler(2),
                               evaluation.find_samples(_hr_folder(tmp_path / "good"), 2), 2)
    assert report["images"] == good
    assert "d x2: PSNR" in proc.stdout and "(2 images, 1 not scored)" in proc.stdout


def test_eval_reads_the_scale_from_the_checkpoint(tmp_path, checkpoints, capsys):
    data = _benchmark_folder(tmp_path / "bench", 4)
    rc = eval_cli.main(["--checkpoint", str(checkpoints / "x4.safetensors"), "--data",
                        f"b={data}", "--json", str(tmp_path / "s.json")])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "s.json").read_text())["b"]
    assert report["scale"] == 4 and len(report["images"]) == 2
    # --bicubic has no model to ask.
    rc = eval_cli.main(["--bicubic", "--data", f"b={data}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == ["error: --bicubic needs --scale"]


@pytest.mark.slow
def test_eval_cli_bad_dataset_paths(tmp_path):
    out = tmp_path / "scores.json"
    proc = run_cli("eval.py", "--bicubic", "--scale", "2", "--data", f"d={tmp_path / 'nope'}",
                   "--json", out)
    assert_one_line_error(proc, "nope", "no such directory")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    proc = run_cli("eval.py", "--bicubic", "--scale", "2", "--data", f"d={tmp_path / 'empty'}",
                   "--json", out)
    assert_one_line_error(proc, "empty", "unknown dataset layout")
    proc = run_cli("eval.py", "--bicubic", "--scale", "2", "--data", "noequals")
    assert_one_line_error(proc, "NAME=DIR")
    assert not out.exists()


@pytest.mark.parametrize(
    "ckpt, needles",
    [("missing.safetensors", ["missing.safetensors", "no such file"]),
     ("corrupt.safetensors", ["corrupt.safetensors"]),
     ("x4.safetensors", ["x4.safetensors", "x4 model", "--scale is 2"])],
)
def test_eval_cli_bad_checkpoint(tmp_path, checkpoints, ckpt, needles):
    data = _hr_folder(tmp_path / "data")
    out = tmp_path / "scores.json"
    proc = run_cli("eval.py", "--checkpoint", checkpoints / ckpt, "--scale", "2",
                   "--data", f"d={data}", "--json", out)
    assert_one_line_error(proc, *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    "name, needles",
    [("truncated.png", ["truncated.png", "corrupt or truncated"]),
     ("notimage.png", ["notimage.png", "not an image"]),
     ("missing.png", ["missing.png", "no such file"])],
)
def test_upscale_cli_bad_input(tmp_path, checkpoints, bad_files, name, needles):
    out = tmp_path / "out.png"
    proc = run_cli("-m", "maffsrn_jax.upscale", "--checkpoint", checkpoints / "x2.safetensors",
                   "--input", bad_files / name, "--output", out)
    assert_one_line_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ckpt", ["missing.safetensors", "corrupt.safetensors"])
def test_upscale_cli_bad_checkpoint(tmp_path, checkpoints, bad_files, ckpt):
    out = tmp_path / "out.png"
    proc = run_cli("-m", "maffsrn_jax.upscale", "--checkpoint", checkpoints / ckpt,
                   "--input", bad_files / "good.png", "--output", out)
    assert_one_line_error(proc, ckpt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_upscale_cli_directory_of_odd_images(tmp_path, checkpoints, bad_files, tiny):
    """Gray, 16-bit gray, RGBA, 16-bit RGB, 1x1, bf16 compute; failures listed at the end."""
    src = tmp_path / "in"
    src.mkdir()
    rgb = _photo(14, 19)
    images = {
        "gray": rgb[..., 0],
        "gray16": rgb[..., 0].astype(np.uint16) * 257 + 100,
        "rgba": np.dstack([rgb, rgb[..., 2]]),
        "rgb16": rgb.astype(np.uint16) * 257,
        "dot": rgb[:1, :1],
    }
    for name, arr in images.items():
        image_io.save_image(src / f"{name}.png", arr)
    (src / "a_truncated.png").write_bytes((bad_files / "truncated.png").read_bytes())
    (src / "b_text.png").write_bytes((bad_files / "notimage.png").read_bytes())
    (src / "README.md").write_text("not an image name: skipped\n")
    dst = tmp_path / "out"

    proc = run_cli("-m", "maffsrn_jax.upscale", "--checkpoint", checkpoints / "x2.safetensors",
                   "--input", src, "--output", dst)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "a_truncated.png" in lines[0]
    assert lines[1].startswith("error: ") and "b_text.png" in lines[1]
    assert lines[2].startswith(f"5 of 7 images upscaled x2 into {dst}; failed: a_truncated.png (")
    assert "b_text.png (not an image file" in lines[2]
    assert lines[2].endswith("; skipped: README.md (not an image file name)")
    assert sorted(p.name for p in dst.iterdir()) == sorted(f"{n}.png" for n in images)
    # One line per image written, with its size and kind.
    written = sorted(proc.stdout.strip().splitlines())
    assert written == sorted([f"wrote {dst / 'dot.png'} (2x2 RGB, 8-bit)",
                              f"wrote {dst / 'gray.png'} (38x28 gray, 8-bit)",
                              f"wrote {dst / 'gray16.png'} (38x28 gray, 16-bit)",
                              f"wrote {dst / 'rgb16.png'} (38x28 RGB, 16-bit)",
                              f"wrote {dst / 'rgba.png'} (38x28 RGBA, 8-bit)"])

    model, variables = tiny
    for name, arr in images.items():
        out = image_io.load_image(dst / f"{name}.png")
        assert out.dtype == arr.dtype and out.shape == (2 * arr.shape[0], 2 * arr.shape[1],
                                                        *arr.shape[2:]), name
        expected = upscale.upscale_image(model, variables, arr)
        # Same computation in another process: at most one level of rounding apart.
        assert np.abs(out.astype(np.int64) - expected).max() <= 1, name

    # bfloat16 compute: same kind of output, close to float32.
    proc = run_cli("-m", "maffsrn_jax.upscale", "--checkpoint", checkpoints / "x2.safetensors",
                   "--input", src / "rgb16.png", "--output", tmp_path / "bf16.png",
                   "--dtype", "bfloat16")
    assert proc.returncode == 0, proc.stderr
    out = image_io.load_image(tmp_path / "bf16.png")
    ref = image_io.load_image(dst / "rgb16.png")
    assert out.dtype == np.uint16 and out.shape == ref.shape
    assert _psnr_float(out / 65535, ref / 65535) > 30


def test_upscale_cli_argument_errors(tmp_path, checkpoints, bad_files):
    ckpt = checkpoints / "x2.safetensors"
    proc = run_cli("-m", "maffsrn_jax.upscale", "--checkpoint", ckpt, "--input",
                   bad_files / "good.png", "--output", tmp_path / "no_dir" / "out.png")
    assert_one_line_error(proc, "no_dir", "does not exist")
    proc = run_cli("-m", "maffsrn_jax.upscale", "--checkpoint", ckpt, "--input",
                   bad_files / "good.png", "--output", tmp_path / "out.png", "--tile", "8")
    assert_one_line_error(proc, "--tile")
    assert list(tmp_path.iterdir()) == []


def test_upscale_writes_single_file_into_existing_directory(tmp_path, checkpoints, bad_files,
                                                           capsys):
    rc = upscale.main(["--checkpoint", str(checkpoints / "x2.safetensors"),
                       "--input", str(bad_files / "good.png"), "--output", str(tmp_path)])
    assert rc == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'good.png'} (48x40 RGB, 8-bit)\n"
    assert image_io.load_image(tmp_path / "good.png").shape == (40, 48, 3)
    assert Image.open(tmp_path / "good.png").format == "PNG"


def test_upscale_folder_summary_when_all_succeed(tmp_path, checkpoints, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "sub").mkdir()
    (src / ".hidden.png").write_bytes(b"")
    image_io.save_image(src / "a.png", _photo(14, 15))
    rc = upscale.main(["--checkpoint", str(checkpoints / "x2.safetensors"), "--input", str(src),
                       "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert out == [f"wrote {tmp_path / 'out' / 'a.png'} (30x28 RGB, 8-bit)",
                   f"1 of 1 images upscaled x2 into {tmp_path / 'out'}; skipped: .hidden.png "
                   "(hidden), sub/ (a folder)"]


def test_upscale_scale_must_match_the_checkpoint(tmp_path, checkpoints, bad_files, capsys):
    rc = upscale.main(["--checkpoint", str(checkpoints / "x2.safetensors"), "--scale", "3",
                       "--input", str(bad_files / "good.png"), "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "a x2 model, but --scale is 3" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_upscale_without_checkpoint_runs_the_shipped_model(tmp_path, bad_files, capsys):
    import maffsrn_jax

    scale = 2  # the cheapest of the shipped models; --scale picks maffsrn_x{scale}
    rc = upscale.main(["--scale", str(scale), "--input", str(bad_files / "good.png"),
                       "--output", str(tmp_path / "out.png")])
    assert rc == 0, capsys.readouterr().err
    model, variables = maffsrn_jax.load_pretrained(f"maffsrn_x{scale}")
    want = upscale.upscale_image(model, variables, image_io.load_image(bad_files / "good.png"))
    np.testing.assert_array_equal(image_io.load_image(tmp_path / "out.png"), want)
    # No such shipped scale: one line naming the flag.
    rc = upscale.main(["--scale", "7", "--input", str(bad_files / "good.png"),
                       "--output", str(tmp_path / "x7.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --scale 7: maffsrn_x7")


def test_upscale_help_is_for_users():
    proc = run_cli("-m", "maffsrn_jax.upscale", "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m maffsrn_jax.upscale")
    for internal in ("image_io", "inference.", "load_image", "DEFAULT_TILE", "maffsrn_jax."):
        assert internal not in proc.stdout.split("\n", 1)[1], internal
