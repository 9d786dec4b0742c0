"""Upscales your own images with MAFFSRN.

    maffsrn-upscale --input photo.jpg --output photo_x4.png        # the shipped x4 model
    maffsrn-upscale --scale 2 --input photos/ --output photos_x2/  # every image of a folder
    maffsrn-upscale --checkpoint runs/x2 --input photo.jpg --output photo_x2.png

Without --checkpoint the model shipped with the package for --scale (default 4) runs. Any
image Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...), of any size from 1x1 up, keeps its kind:
gray in -> gray out, RGBA -> RGBA (the alpha channel by bicubic), 16-bit in -> 16-bit out.
Large images run in overlapping tiles (--tile) so memory stays bounded. A folder input writes
<output>/<name>.png for every image in it, goes on past images it cannot read, and ends with a
summary of what it wrote and what it skipped and why. Every output is written whole or not at
all; each is reported in one line (path and size).

Exit codes: 0 ok, 1 some images of a folder failed, 2 bad input or arguments (one `error:`
line naming the file or flag), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from maffsrn_jax import convert, image_io, inference, metrics, runtimes, xla_options
from maffsrn_jax.cli import prog_name
from maffsrn_jax.errors import Error, os_error_line, run_cli
from maffsrn_jax.files import is_image_name, list_images
from maffsrn_jax.imresize import imresize

DEFAULT_SCALE = 4
# How many names a summary line lists before "and N more".
SHOWN_NAMES = 5


class UpscaleError(Error):
    """Bad arguments; the message names the flag or path."""


def upscale_image(
    model: Any,
    variables: Any,
    image: np.ndarray,
    *,
    tile: int | None = inference.DEFAULT_TILE,
    overlap: int = inference.DEFAULT_OVERLAP,
    self_ensemble: bool = False,
) -> np.ndarray:
    """Upscales a `load_image` array by `model.scale`, keeping its dtype and channels.

    Args:
        image: uint8 or uint16 [H, W] (gray), [H, W, 3] (RGB) or [H, W, 4] (RGBA).

    Returns:
        The same dtype, shaped [sH, sW] / [sH, sW, 3] / [sH, sW, 4].
    """
    run_rgb = lambda rgb: inference.upscale_array(
        model, variables, rgb, tile=tile, overlap=overlap, self_ensemble=self_ensemble
    )
    return upscale_image_with(run_rgb, model.scale, image)


def upscale_image_with(
    run_rgb: inference.UpscaleFn, scale: int, image: np.ndarray
) -> np.ndarray:
    """`upscale_image` with any float RGB upscaler [H, W, 3] -> [sH, sW, 3] (e.g. an
    exported model from `maffsrn_jax.runtimes`)."""
    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8 or uint16 pixels, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"expected a gray, RGB or RGBA image, got shape {image.shape}")
    peak = np.iinfo(image.dtype).max
    gray = image.ndim == 2
    rgb = np.repeat(image[..., None], 3, axis=2) if gray else image[..., :3]
    sr = run_rgb(rgb.astype(np.float32) / peak)
    if gray:
        return metrics.quantize(sr.mean(axis=2), image.dtype)
    out = metrics.quantize(sr, image.dtype)
    if image.shape[2] == 4:
        alpha = imresize(image[..., 3], scale, output_shape=out.shape[:2])
        out = np.concatenate([out, alpha[..., None]], axis=2)
    return out


def plan(input_path: Path, output_path: Path) -> tuple[list[tuple[Path, Path]], bool]:
    """([(input file, output file)], whether the input is a directory), checked up front."""
    if input_path.is_dir():
        if output_path.exists() and not output_path.is_dir():
            raise UpscaleError(f"--output {output_path}: exists and is not a directory")
        inputs = list_images(input_path)
        if not inputs:
            raise UpscaleError(f"--input {input_path}: no image files in the directory")
        jobs = [(p, output_path / f"{p.stem}.png") for p in inputs]
        by_output: dict[Path, list[str]] = {}
        for src, dst in jobs:
            by_output.setdefault(dst, []).append(src.name)
        clashes = [names for names in by_output.values() if len(names) > 1]
        if clashes:
            raise UpscaleError(
                f"--input {input_path}: {' and '.join(clashes[0])} would both be written to "
                f"{Path(clashes[0][0]).stem}.png"
            )
        if output_path.resolve() == input_path.resolve():
            raise UpscaleError(f"--output {output_path}: must differ from the input directory")
        return jobs, True

    if not input_path.exists():
        raise UpscaleError(f"--input {input_path}: no such file or directory")
    if output_path.is_dir():
        output_path = output_path / f"{input_path.stem}.png"
    if not output_path.parent.is_dir():
        raise UpscaleError(f"--output {output_path}: directory {output_path.parent} does not exist")
    if output_path.suffix.lower() not in Image.registered_extensions():
        raise UpscaleError(f"--output {output_path}: unknown image file extension")
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise UpscaleError(f"--output {output_path}: refusing to overwrite the input")
    return [(input_path, output_path)], False


def skipped_entries(folder: Path) -> list[str]:
    """'name (why)' for each entry of `folder` that a folder run does not read."""
    skipped = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            skipped.append(f"{p.name}/ (a folder)")
        elif p.name.startswith("."):
            skipped.append(f"{p.name} (hidden)")
        elif not is_image_name(p):
            skipped.append(f"{p.name} (not an image file name)")
    return skipped


def _listing(items: list[str]) -> str:
    more = f" and {len(items) - SHOWN_NAMES} more" if len(items) > SHOWN_NAMES else ""
    return ", ".join(items[:SHOWN_NAMES]) + more


def _size(image: np.ndarray) -> str:
    kind = {1: "gray", 3: "RGB", 4: "RGBA"}[1 if image.ndim == 2 else image.shape[2]]
    return f"{image.shape[1]}x{image.shape[0]} {kind}, {8 * image.itemsize}-bit"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog_name("maffsrn_jax.upscale", argv), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="an image file or a folder of images")
    parser.add_argument("--output", required=True,
                        help="output file (format by extension) or folder (PNG files)")
    parser.add_argument("--scale", type=int, default=None,
                        help=f"upscaling factor: picks the shipped model (default {DEFAULT_SCALE});"
                        " with --checkpoint, checked against it")
    parser.add_argument("--checkpoint",
                        help="your own model instead of the shipped one: a training run's folder, "
                        "a .pt/.pth or .safetensors file, a shipped name (maffsrn_x2), or a file "
                        "from maffsrn-export (.onnx, .tflite, .stablehlo)")
    parser.add_argument("--tile", type=int, default=inference.DEFAULT_TILE,
                        help="tile size in input pixels; 0 runs whole images "
                        "(default: %(default)s)")
    parser.add_argument("--overlap", type=int, default=inference.DEFAULT_OVERLAP,
                        help="tile overlap in input pixels (default: %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute precision (default: %(default)s)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average the 8 flips/transposes (8x slower, slightly better)")
    return parser.parse_args(argv)


def _upscaler(args: argparse.Namespace) -> tuple[Any, int]:
    """(image -> upscaled image, scale) of the model the arguments name."""
    if args.scale is not None and args.scale < 2:
        raise UpscaleError(f"--scale must be an integer >= 2, got {args.scale}")
    checkpoint = args.checkpoint or f"maffsrn_x{args.scale or DEFAULT_SCALE}"
    if runtimes.is_artifact(checkpoint):
        # A TFLite model tiles at its fixed input size whatever --tile says.
        fn, scale = runtimes.load_upscaler(checkpoint, tile=args.tile or None,
                                           overlap=args.overlap,
                                           self_ensemble=args.self_ensemble)
        upscale = lambda image: upscale_image_with(fn, scale, image)
    else:
        try:
            model, variables = convert.load_pretrained(checkpoint,
                                                       dtype=getattr(jnp, args.dtype))
        except convert.CheckpointError as e:
            if args.checkpoint:
                raise
            raise UpscaleError(f"--scale {args.scale or DEFAULT_SCALE}: {e}") from None
        options = dict(tile=args.tile or None, overlap=args.overlap,
                       self_ensemble=args.self_ensemble)
        scale = model.scale
        upscale = lambda image: upscale_image(model, variables, image, **options)
    if args.scale is not None and args.scale != scale:
        raise UpscaleError(f"--checkpoint {checkpoint}: a x{scale} model, but --scale is "
                           f"{args.scale}")
    return upscale, scale


def run(args: argparse.Namespace) -> int:
    if args.tile:
        try:
            inference.check_tiling(args.tile, args.overlap)
        except ValueError as e:
            raise UpscaleError(f"--tile {args.tile} --overlap {args.overlap}: {e}") from None
    jobs, is_dir = plan(Path(args.input), Path(args.output))
    upscale, scale = _upscaler(args)

    if not is_dir:
        (src, dst), = jobs
        out = upscale(image_io.load_image(src))
        image_io.save_image(dst, out)
        print(f"wrote {dst} ({_size(out)})")
        return 0

    out_dir = jobs[0][1].parent
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for src, dst in tqdm(jobs, desc=f"x{scale}", unit="img", disable=None):
        try:
            out = upscale(image_io.load_image(src))
            image_io.save_image(dst, out)
        except image_io.ImageError as e:
            failures.append((src.name, e.reason, str(e)))
            continue
        except ValueError as e:
            failures.append((src.name, str(e), f"{src}: {e}"))
            continue
        except OSError as e:  # an unreadable input or an unwritable output: try the next
            line = os_error_line(e) if e.filename else f"{src}: {os_error_line(e)}"
            failures.append((src.name, e.strerror or str(e), line))
            continue
        tqdm.write(f"wrote {dst} ({_size(out)})")
    for _, _, line in failures:
        print(f"error: {line}", file=sys.stderr)
    summary = f"{len(jobs) - len(failures)} of {len(jobs)} images upscaled x{scale} into {out_dir}"
    if failures:
        summary += f"; failed: {_listing([f'{name} ({why})' for name, why, _ in failures])}"
    skipped = skipped_entries(Path(args.input))
    if skipped:
        summary += f"; skipped: {_listing(skipped)}"
    print(summary, file=sys.stderr if failures else sys.stdout)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    xla_options.tune_process()
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
