"""Builds the static site: `python -m maffsrn_jax.web build --output DIR`.

The folder holds the page (index.html, app.js, worker.js, core.js, png.js, sniff.js,
style.css), `ort/` (ONNX Runtime Web's WASM and WebGPU builds, copied from the npm package
that web/package-lock.json pins; run `npm ci` in web/ first), `models/maffsrn_x{2,3,4}.onnx`
(float32 ONNX exports, `maffsrn_jax.export`) and `config.json` (the scales, the tiling of
`maffsrn_jax.upscale` and the page's size limit). It is written beside DIR and moved into
place when complete, so DIR is an old build or a new one, never half of one.

Weights: the shipped `maffsrn_x2`, `maffsrn_x3`, `maffsrn_x4` by default; --checkpoint-xS
gives another checkpoint (or shipped name) for scale S. A scale with no weights is left out of
the page (with a note); a build with none at all is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from maffsrn_jax.errors import Error

SCALES = (2, 3, 4)
STATIC = Path(__file__).with_name("static")
PAGE_FILES = ("index.html", "style.css", "app.js", "worker.js", "core.js", "png.js", "sniff.js")
# What the page loads from onnxruntime-web's dist/: the WASM build (the usual case) and the
# WebGPU build, whose WASM half (asyncify) is also its fallback.
ORT_FILES = (
    "ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm",
    "ort.webgpu.min.mjs",
    "ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm",
)
# The page refuses images whose result would have more pixels than this (4096 x 4096): the
# result's float32 blending buffers alone then take 256 MiB of the tab's memory.
MAX_OUTPUT_PIXELS = 4096 * 4096
MAX_FILE_BYTES = 64 * 2**20
# config.json's `format`: which page a folder holds, so that `build` only replaces its own.
FORMAT = "maffsrn-web/1"


class WebError(Error):
    """Bad arguments or missing parts for the site; the message names them."""


def default_onnxruntime_web() -> Path:
    """onnxruntime-web's dist/ as `npm ci` in this checkout's web/ folder installs it."""
    checkout = Path(__file__).resolve().parents[2]
    for root in (checkout, Path.cwd()):
        dist = root / "web" / "node_modules" / "onnxruntime-web" / "dist"
        if dist.is_dir():
            return dist
    return checkout / "web" / "node_modules" / "onnxruntime-web" / "dist"


def _onnxruntime_web(dist: str | os.PathLike | None) -> tuple[Path, str]:
    """(the dist/ folder, its version), checked to hold every file the page loads."""
    given = dist is not None
    d = Path(dist) if given else default_onnxruntime_web()
    missing = [f for f in ORT_FILES if not (d / f).is_file()]
    if missing:
        how = ("--onnxruntime-web" if given
               else "ONNX Runtime Web is not installed: run `npm ci` in the checkout's web/ "
               "folder, or pass --onnxruntime-web;")
        raise WebError(f"{how} {d}: no {missing[0]}")
    try:
        version = json.loads((d.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        version = "unknown"
    return d, version


def _weights(checkpoints: Mapping[int, str | None]) -> dict[int, str]:
    """Scale -> the checkpoint to export: the given ones, else the shipped ones."""
    from maffsrn_jax.pretrained import pretrained_names

    shipped = set(pretrained_names())
    chosen = {}
    for scale in SCALES:
        given = checkpoints.get(scale)
        if given is not None:
            chosen[scale] = given
        elif f"maffsrn_x{scale}" in shipped:
            chosen[scale] = f"maffsrn_x{scale}"
    if not chosen:
        raise WebError("no weights to build with: this installation ships none; pass "
                       + ", ".join(f"--checkpoint-x{s}" for s in SCALES))
    for scale in SCALES:
        if scale not in chosen:
            print(f"note: no x{scale} weights (not shipped, no --checkpoint-x{scale}); "
                  f"the page offers x{', x'.join(map(str, chosen))} only", file=sys.stderr)
    return chosen


def _onnx_model(checkpoint: str, scale: int) -> bytes:
    from maffsrn_jax import convert, export

    model, variables = convert.load_pretrained(checkpoint)
    if model.scale != scale:
        raise WebError(f"--checkpoint-x{scale} {checkpoint}: is a x{model.scale} model")
    try:
        return export.onnx_bytes(model, variables)
    except ImportError as e:
        raise WebError(f"exporting to ONNX needs {e.name or e}: pip install "
                       "'maffsrn-jax[export]'") from None


def _check_output(out: Path) -> None:
    """Refuses to replace anything but an empty folder or an earlier build."""
    if not out.exists():
        if not out.parent.is_dir():
            raise WebError(f"--output {out}: directory {out.parent} does not exist")
        return
    if not out.is_dir():
        raise WebError(f"--output {out}: exists and is not a directory")
    if not any(out.iterdir()):
        return
    try:
        ours = json.loads((out / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise WebError(f"--output {out}: not empty and not an earlier build of the page "
                       "(refusing to replace it)")


def _example_limits() -> str:
    sides = [f"{int((MAX_OUTPUT_PIXELS / s**2) ** 0.5)}² at ×{s}" for s in SCALES]
    return ", ".join(sides)


def build(output: str | os.PathLike, checkpoints: Mapping[int, str | None] | None = None,
          onnxruntime_web: str | os.PathLike | None = None) -> dict:
    """Writes the site to `output` (see the module docstring); returns its config.json."""
    from maffsrn_jax import inference
    from maffsrn_jax.models import MIN_INPUT_SIZE

    out = Path(output)
    _check_output(out)
    dist, ort_version = _onnxruntime_web(onnxruntime_web)
    weights = _weights(checkpoints or {})
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        (tmp / "ort").mkdir(parents=True)
        (tmp / "models").mkdir()
        for name in PAGE_FILES:
            shutil.copyfile(STATIC / name, tmp / name)
        for name in ORT_FILES:
            shutil.copyfile(dist / name, tmp / "ort" / name)
        models = {}
        for scale, checkpoint in weights.items():
            models[str(scale)] = f"maffsrn_x{scale}.onnx"
            (tmp / "models" / models[str(scale)]).write_bytes(_onnx_model(checkpoint, scale))
        config = {
            "format": FORMAT,
            "scales": sorted(weights),
            "models": models,
            "weights": {str(s): os.path.basename(str(c)) for s, c in weights.items()},
            "tile": inference.DEFAULT_TILE,
            "overlap": inference.DEFAULT_OVERLAP,
            "min_input_size": MIN_INPUT_SIZE,
            "max_output_pixels": MAX_OUTPUT_PIXELS,
            "max_file_bytes": MAX_FILE_BYTES,
            "example_limits": _example_limits(),
            "onnxruntime_web": ort_version,
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        # GitHub Pages would otherwise run the folder through Jekyll.
        (tmp / ".nojekyll").write_text("")
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return config


def _swap_in(new: Path, out: Path) -> None:
    """Moves the finished build `new` to `out`, replacing an earlier one."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(output: str, checkpoints: Mapping[int, str | None],
         onnxruntime_web: str | None) -> None:
    config = build(output, checkpoints, onnxruntime_web)
    size = sum(f.stat().st_size for f in Path(output).rglob("*") if f.is_file())
    scales = ", ".join(f"x{s}" for s in config["scales"])
    print(f"wrote {output} ({size / 2**20:.1f} MiB: the page, ONNX Runtime Web "
          f"{config['onnxruntime_web']}, models {scales}); try it with\n"
          f"  python -m maffsrn_jax.web serve {output} --port 8000")
