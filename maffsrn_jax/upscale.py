"""Upscales your own images with a MAFFSRN checkpoint.

    python -m maffsrn_jax.upscale --checkpoint CKPT --input photo.jpg --output photo_x2.png
    python -m maffsrn_jax.upscale --checkpoint CKPT --input photos/ --output photos_x2/

Any image `image_io.load_image` reads, of any size from 1x1 up, keeps its kind:
- gray in -> gray out: the gray image is replicated to RGB, upscaled, and the three output
  channels averaged (the closest gray image to the output; it leaves an exactly gray output
  unchanged and, unlike luma weights, treats the model's small per-channel errors alike);
- RGBA -> RGBA: colour by the model, alpha by MATLAB bicubic (`imresize`);
- 16-bit in -> 16-bit out: the model runs on the float image at full 16-bit precision.
Large images run in overlapping tiles (`--tile`, default `inference.DEFAULT_TILE`; 0 = whole
image) so memory stays bounded. A directory input writes `<output>/<name>.png` for every image
in it, keeps going past failures and lists them at the end. Outputs are written atomically.

Exit codes: 0 ok, 1 some images of a directory failed, 2 bad input or arguments (one `error:`
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
from maffsrn_jax.errors import Error, os_error_line, run_cli
from maffsrn_jax.files import list_images
from maffsrn_jax.imresize import imresize


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m maffsrn_jax.upscale", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True,
                        help="Orbax directory, .pt/.pth or .safetensors, or an exported "
                        ".onnx/.tflite/.stablehlo (maffsrn_jax.export)")
    parser.add_argument("--input", required=True, help="an image file or a directory of images")
    parser.add_argument("--output", required=True,
                        help="output file (format by extension) or directory (PNG files)")
    parser.add_argument("--tile", type=int, default=inference.DEFAULT_TILE,
                        help="LR tile size; 0 runs whole images (default: %(default)s)")
    parser.add_argument("--overlap", type=int, default=inference.DEFAULT_OVERLAP,
                        help="tile overlap in LR pixels (default: %(default)s)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (parameters stay float32)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average the 8 flips/transposes (8x slower, slightly better)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.tile:
        try:
            inference.check_tiling(args.tile, args.overlap)
        except ValueError as e:
            raise UpscaleError(f"--tile {args.tile} --overlap {args.overlap}: {e}") from None
    jobs, is_dir = plan(Path(args.input), Path(args.output))
    if runtimes.is_artifact(args.checkpoint):
        # A TFLite model tiles at its fixed input size whatever --tile says.
        fn, scale = runtimes.load_upscaler(args.checkpoint, tile=args.tile or None,
                                           overlap=args.overlap,
                                           self_ensemble=args.self_ensemble)
        upscale = lambda image: upscale_image_with(fn, scale, image)
    else:
        model, variables = convert.load_pretrained(
            args.checkpoint, dtype=getattr(jnp, args.dtype)
        )
        options = dict(tile=args.tile or None, overlap=args.overlap,
                       self_ensemble=args.self_ensemble)
        scale = model.scale
        upscale = lambda image: upscale_image(model, variables, image, **options)

    if not is_dir:
        (src, dst), = jobs
        image_io.save_image(dst, upscale(image_io.load_image(src)))
        return 0

    jobs[0][1].parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for src, dst in tqdm(jobs, desc=f"x{scale}", unit="img", disable=None):
        try:
            image_io.save_image(dst, upscale(image_io.load_image(src)))
        except image_io.ImageError as e:
            failures.append(str(e))
        except ValueError as e:
            failures.append(f"{src}: {e}")
        except OSError as e:  # an unreadable input or an unwritable output: try the next
            failures.append(os_error_line(e) if e.filename else f"{src}: {os_error_line(e)}")
    for message in failures:
        print(f"error: {message}", file=sys.stderr)
    if failures:
        print(f"error: {len(failures)} of {len(jobs)} images failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    xla_options.keep_freed_memory()
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
