"""The browser page (maffsrn_jax.web): built once from small random-init x2/x3/x4 checkpoints,
served by `serve`, driven in Debian's headless Chromium through the `?src=&scale=` contract
(web/driver.mjs, puppeteer-core), and compared pixel by pixel with the Python upscaler on the
same weights.

The browser tests never skip: without Node.js, `npm ci`'s packages or Chromium they fail and
say which is missing (`.ci/run` installs all three).
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from maffsrn_jax import convert, export, image_io, upscale
from maffsrn_jax.models import MAFFSRN
from maffsrn_jax.web import site
from tests.conftest import REPO

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DRIVER = REPO / "web" / "driver.mjs"
PAGE_TIMEOUT = 300  # seconds for one page run on a loaded 2-core machine

# The tests on the built site take minutes in all (a build, a dozen Chromium runs): `slow`.


def _need_browser() -> str:
    """The node binary, or the test fails naming what is missing (never a skip)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not installed: the browser tests need `node` (Debian: nodejs)")
    if not (REPO / "web" / "node_modules" / "puppeteer-core").is_dir():
        pytest.fail("web/node_modules is missing: run `npm ci` in web/ (.ci/run does)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium "
                    "(apt-get install chromium) or set CHROMIUM_PATH")
    return node


def _image(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def _u8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    """Random-init x2/x3/x4 models of one FFG (every op of the full model, fast to export)."""
    d = tmp_path_factory.mktemp("web-weights")
    paths = {}
    for scale in site.SCALES:
        model = MAFFSRN(scale=scale, n_ffgs=1, n_mabs=2)
        variables = model.init(jax.random.key(scale), np.zeros((1, 16, 16, 3), np.float32))
        paths[scale] = d / f"x{scale}.safetensors"
        convert.save_state_dict(convert.flax_to_torch(model, variables), paths[scale])
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory, checkpoints) -> Path:
    out = tmp_path_factory.mktemp("web-site") / "site"
    cmd = [sys.executable, "-m", "maffsrn_jax.web", "build", "--output", str(out)]
    for scale, path in checkpoints.items():
        cmd += [f"--checkpoint-x{scale}", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    # The test images, same-origin as the page requires.
    inputs = out / "inputs"
    inputs.mkdir()
    _image(inputs / "odd.png", _u8(export.check_image((77, 123))))
    # Wider than one 384-pixel tile: two tiles blended across the middle.
    _image(inputs / "wide.png", _u8(export.check_image((150, 420))))
    gray = export.check_image((61, 90)) @ np.array([0.3, 0.5, 0.2], np.float32)
    _image(inputs / "gray.png", _u8(gray))
    rgba = _u8(export.check_image((40, 50)))
    alpha = np.broadcast_to(np.linspace(0, 255, 50).round().astype(np.uint8), (40, 50))
    _image(inputs / "alpha.png", np.dstack([rgba, alpha]))
    (inputs / "text.png").write_text("this is a text file, not a picture\n")
    valid = (inputs / "odd.png").read_bytes()
    (inputs / "truncated.png").write_bytes(valid[: len(valid) // 2])
    # A flat picture compresses to a few kB, but its x4 result would be 19 megapixels.
    _image(inputs / "huge.png", np.full((1100, 1100, 3), 128, np.uint8))
    return out


@pytest.fixture(scope="module")
def server(built):
    proc = subprocess.Popen(
        [sys.executable, "-m", "maffsrn_jax.web", "serve", str(built), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
    )
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, f"serve printed {line!r}"
        yield line.split(" at ")[1].split()[0].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


_RUNS: dict[str, dict] = {}


def run_page(server: str, query: str, out_dir: Path) -> dict:
    """Opens `/?<query>` in Chromium until it is done; {title, stats, png, screenshot}."""
    if query in _RUNS:
        return _RUNS[query]
    node = _need_browser()
    stem = "".join(c if c.isalnum() else "_" for c in query)
    png, shot = out_dir / f"{stem}.png", out_dir / f"{stem}_screen.png"
    proc = subprocess.run(
        [node, str(DRIVER), "--url", f"{server}/?{query}", "--png", str(png),
         "--screenshot", str(shot), "--timeout", str(PAGE_TIMEOUT)],
        capture_output=True, text=True, timeout=PAGE_TIMEOUT + 120,
    )
    assert proc.returncode == 0, f"driver failed: {proc.stderr.strip()}"
    result = json.loads(proc.stdout)
    result.update(png=png, screenshot=shot)
    _RUNS[query] = result
    return result


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("web-results")


# (image, scale, extra query, tile, overlap): the three images the issue names, one RGBA,
# and the wide image again at a small tile, where tiling changes the picture by several
# levels (so a page that tiled differently from Python would fail).
CASES = [
    ("odd", 2, "", 384, 32),
    ("wide", 3, "", 384, 32),
    ("gray", 4, "", 384, 32),
    ("alpha", 2, "", 384, 32),
    ("wide", 2, "&tile=64&overlap=16", 64, 16),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "scale", "extra", "tile", "overlap"), CASES,
                         ids=[f"{c[0]}-x{c[1]}{'-tile' + str(c[3]) if c[2] else ''}"
                              for c in CASES])
def test_page_png_equals_python_upscaler(server, built, checkpoints, out_dir, name, scale,
                                         extra, tile, overlap):
    run = run_page(server, f"src=inputs/{name}.png&scale={scale}{extra}", out_dir)
    assert run["title"] == "done", run
    assert run["stats"]["last"]["backend"] in ("wasm", "webgpu")
    page = image_io.load_image(run["png"])
    model, variables = convert.load_pretrained(checkpoints[scale])
    lr = image_io.load_image(built / "inputs" / f"{name}.png")
    want = upscale.upscale_image(model, variables, lr, tile=tile, overlap=overlap)
    assert page.shape == want.shape and page.dtype == want.dtype
    diff = np.abs(page.astype(int) - want.astype(int))
    pixel_diff = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=-1)
    assert pixel_diff.max() <= 1
    assert (pixel_diff == 0).mean() >= 0.999
    if extra:
        # The check has teeth: untiled, the picture differs by far more than one level.
        untiled = upscale.upscale_image(model, variables, lr, tile=None)
        assert np.abs(untiled.astype(int) - want.astype(int)).max() > 1


@pytest.mark.slow
def test_page_shows_the_result(server, out_dir):
    run = run_page(server, "src=inputs/odd.png&scale=2", out_dir)
    shot = np.asarray(Image.open(run["screenshot"]).convert("RGB"))
    # Not blank: the comparison shows the picture's many colours, not a page of one colour.
    colours = np.unique(shot.reshape(-1, 3), axis=0)
    assert len(colours) > 1000
    assert shot.std() > 20
    assert run["stats"]["last"]["width"] == 246


@pytest.mark.slow
@pytest.mark.parametrize(("name", "scale", "words"), [
    ("text", 2, "text.png is not an image file"),
    ("truncated", 2, "truncated.png could not be decoded"),
    ("huge", 4, "above the page's limit"),
    ("missing", 2, "HTTP 404"),
])
def test_bad_input_is_an_error_title(server, out_dir, name, scale, words):
    run = run_page(server, f"src=inputs/{name}.png&scale={scale}", out_dir)
    assert run["title"].startswith("error: ")
    assert words in run["title"]


@pytest.mark.slow
def test_serve_sends_isolation_headers_and_mime_types(server):
    for path, mime in [("/", "text/html"), ("/app.js", "text/javascript"),
                       ("/ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
                       ("/ort/ort.wasm.min.mjs", "text/javascript"),
                       ("/models/maffsrn_x4.onnx", "application/octet-stream")]:
        with urllib.request.urlopen(server + path) as response:
            headers = response.headers
        assert headers["Content-Type"].startswith(mime), path
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"


@pytest.mark.slow
def test_build_output_is_self_contained(built, checkpoints):
    config = json.loads((built / "config.json").read_text())
    assert config["scales"] == [2, 3, 4]
    assert config["tile"] == 384 and config["overlap"] == 32
    for f in site.ORT_FILES:
        assert (built / "ort" / f).stat().st_size > 0
    # Nothing is fetched from elsewhere at run time.
    for f in site.PAGE_FILES:
        assert "https://" not in (built / f).read_text(), f


def _web(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maffsrn_jax.web", *args],
                          capture_output=True, text=True, cwd=REPO)


def test_build_refuses_a_foreign_folder(tmp_path, checkpoints):
    (tmp_path / "notes.txt").write_text("mine")
    proc = _web("build", "--output", str(tmp_path), "--checkpoint-x2", str(checkpoints[2]))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "refusing to replace" in proc.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_build_names_a_wrong_scale_and_missing_runtime(tmp_path, checkpoints):
    proc = _web("build", "--output", str(tmp_path / "a"), "--checkpoint-x3", str(checkpoints[2]))
    assert proc.returncode == 2 and "is a x2 model" in proc.stderr
    assert not (tmp_path / "a").exists() and not list(tmp_path.iterdir())
    proc = _web("build", "--output", str(tmp_path / "b"), "--checkpoint-x2", str(checkpoints[2]),
                "--onnxruntime-web", str(tmp_path))
    assert proc.returncode == 2 and "no ort.wasm.min.mjs" in proc.stderr


def test_serve_refuses_a_folder_that_is_not_a_site(tmp_path):
    proc = _web("serve", str(tmp_path), "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a built site" in proc.stderr


def test_the_page_sources_are_package_data():
    # `build` copies them from the installed package, so the wheel must hold them.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["maffsrn_jax"]
    for name in site.PAGE_FILES:
        assert (site.STATIC / name).is_file()
        assert any(fnmatch.fnmatch(f"web/static/{name}", p) for p in patterns), name
