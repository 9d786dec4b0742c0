"""Single-image inference shared by `eval.py` and `maffsrn_jax.upscale`.

`upscale_array(model, variables, image, tile=..., overlap=..., self_ensemble=...)` takes one
float RGB image [H, W, 3] in [0, 1] of any size from 1x1 up and returns [sH, sW, 3] float32
(unclipped, like the model). `jit_apply(model)` is the compiled model itself (also exported as
`maffsrn_jax.jit_apply`). Three layers, each usable with any `fn: [h, w, 3] -> [sh, sw, 3]`:

- `model_fn`: the jitted model on one image, padded to the model's 13x13 minimum by edge
  replication and cropped back (the ESA max pool cannot run on less).
- `upscale_tiled`: overlapping tiles blended with linear ramps, so memory is bounded by the tile
  size. Tiles are spread evenly from border to border and all have the same shape (none is
  padded: the last one ends exactly at the border), so the model compiles once per tile shape.
- `ensemble_x8`: the EDSR+ geometric self-ensemble (8 flips/transposes, inverted, averaged).

Tiling cannot be exact: ESA max-pools on a grid set by each tile's size and origin and every
convolution zero-pads at the tile border. The defaults keep the difference far below the
model's own error; see `DEFAULT_TILE` for the measurement, and measure your own checkpoint with

    python -m maffsrn_jax.inference --checkpoint CKPT [--tile N --overlap N] IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from maffsrn_jax import convert, image_io, xla_options
from maffsrn_jax.errors import Error, run_cli
from maffsrn_jax.models import MIN_INPUT_SIZE

UpscaleFn = Callable[[np.ndarray], np.ndarray]

# Tiled against untiled output of MAFFSRN x2 (float, before quantisation), with
# `python -m maffsrn_jax.inference --checkpoint CKPT IMAGES`, PSNR in dB / max |diff| in 8-bit
# levels. A briefly trained model (Set5 x2 34.31 dB, bicubic 33.65) on Set5 LR_bicubic/X2,
# Set5 HR baby (512x512 input) and skimage's hubble_deep_field (872x1000):
#   tile/overlap   Set5 LR (<= 256 px)   baby 512       hubble 872x1000
#   64/16          76.2 / 1.09           77.6 / 0.92    76.9 / 1.35
#   128/32         91.1 / 0.26           86.1 / 0.54    87.0 / 0.52
#   256/32         exact (one tile)      100.2 / 0.14   94.1 / 0.36
#   384/32         exact (one tile)      105.3 / 0.07   98.8 / 0.26
# A randomly initialised model (larger, less smooth activations) is the pessimistic case:
# 64/16 54.6 dB, 128/16 63.6 dB, 256/32 78.2 dB, 384/32 87.7 dB on baby 512 and 87.4 dB
# (max 1.1 levels) on hubble. Aligning tile origins to the ESA's 6-pixel grid changed nothing
# measurable (+0.05 dB), so tiles are simply spread evenly. A 384 x 384 tile needs 165 MiB
# (XLA's memory analysis of MAFFSRN x2 on CPU, float32; 74 MiB at 256, 291 MiB at 512), and on
# large images the overlaps cost about (384 / 352)^2 = 1.19x the untiled compute.
DEFAULT_TILE = 384
DEFAULT_OVERLAP = 32


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected a float RGB image [H, W, 3], got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def jit_apply(model: Any) -> Callable[[Any, Any], jax.Array]:
    """`jax.jit(model.apply)` compiled with the package's XLA options: `(variables, x) -> y`.

    The same results as a plain `jax.jit(model.apply)`. On CPU this jaxlib's XLA hands the
    convolutions and dots to YNNPACK fusions that run on one thread; the options
    (`xla_options.compiler_options()`) keep them on XLA's multi-threaded kernels, for this
    program only. Elsewhere there are none and it is a plain jit.
    """
    return jax.jit(model.apply, compiler_options=xla_options.compiler_options())


@functools.lru_cache(maxsize=8)
def _jitted_apply(model: Any) -> Callable[..., jax.Array]:
    # Flax modules hash by their fields, so equal models share one compiled function.
    return jit_apply(model)


def model_fn(model: Any, variables: Any) -> UpscaleFn:
    """The model as a function of one image [h, w, 3] (any h, w >= 1) -> [sh, sw, 3] float32.

    Inputs under `MIN_INPUT_SIZE` are edge-padded on both sides (replication keeps the border
    statistics closest to the image's own) and the output is cropped back.
    """
    apply = _jitted_apply(model)
    variables = jax.device_put(variables)
    return padded_fn(lambda x: apply(variables, x), model.scale, (MIN_INPUT_SIZE, MIN_INPUT_SIZE))


def padded_fn(
    run: Callable[[np.ndarray], Any], scale: int, size: tuple[int, int]
) -> UpscaleFn:
    """`run` ([1, H, W, 3] -> [1, sH, sW, 3], for H, W at least `size`) as a function of one
    image [h, w, 3] of any size: an image smaller than `size` is edge-padded on both sides
    (replication keeps the border statistics closest to the image's own) and the output is
    cropped back."""

    def fn(x: np.ndarray) -> np.ndarray:
        x = _check_image(x)
        h, w = x.shape[:2]
        ph, pw = max(0, size[0] - h), max(0, size[1] - w)
        top, left = ph // 2, pw // 2
        if ph or pw:
            x = np.pad(x, ((top, ph - top), (left, pw - left), (0, 0)), mode="edge")
        y = np.asarray(run(x[None])[0], dtype=np.float32)
        return y[scale * top : scale * (top + h), scale * left : scale * (left + w)]

    return fn


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Origins of tiles of length `tile` covering [0, size), neighbours overlapping >= `overlap`.

    The fewest tiles that fit, spread evenly, the first at 0 and the last ending at `size`.
    A `size` up to `tile` is one tile.
    """
    if size <= tile:
        return [0]
    n = -(-(size - overlap) // (tile - overlap))  # ceil
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramps(starts: list[int], length: int) -> list[np.ndarray]:
    """Per tile, 1-D blending weights [length]: linear ramps over the overlap with each
    neighbour, 1 elsewhere (the image's own borders are not ramped).

    Offset by half a pixel so no weight is 0; two overlapping ramps sum to exactly 1. (Where
    three tiles overlap, which short images can cause, `upscale_tiled` divides by the sum.)
    """
    out = []
    for i, start in enumerate(starts):
        w = np.ones(length, np.float32)
        if i > 0:
            n = starts[i - 1] + length - start
            w[:n] = (np.arange(n) + 0.5) / n
        if i + 1 < len(starts):
            n = start + length - starts[i + 1]
            w[length - n :] = np.minimum(w[length - n :], (np.arange(n)[::-1] + 0.5) / n)
        out.append(w)
    return out


def check_tiling(tile: int, overlap: int) -> None:
    """Raises ValueError unless MIN_INPUT_SIZE <= tile and 0 <= overlap < tile // 2."""
    if tile < MIN_INPUT_SIZE:
        raise ValueError(f"tile must be at least {MIN_INPUT_SIZE}, got {tile}")
    if not 0 <= overlap < tile // 2:
        raise ValueError(f"overlap must be in [0, tile // 2) = [0, {tile // 2}), got {overlap}")


def upscale_tiled(
    fn: UpscaleFn, image: np.ndarray, *, scale: int, tile: int, overlap: int
) -> np.ndarray:
    """Runs `fn` on overlapping `tile` x `tile` crops of image [H, W, 3] and blends the outputs.

    Sides shorter than `tile` are not split (the tile spans them). Returns [sH, sW, 3] float32.
    """
    image = _check_image(image)
    check_tiling(tile, overlap)
    h, w = image.shape[:2]
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    if len(ys) == len(xs) == 1:
        return fn(image)
    wy = [np.repeat(r, scale) for r in _ramps(ys, th)]
    wx = [np.repeat(r, scale) for r in _ramps(xs, tw)]
    out = np.zeros((scale * h, scale * w, 3), np.float32)
    norm = np.zeros((scale * h, scale * w, 1), np.float32)
    for y0, ry in zip(ys, wy, strict=True):
        for x0, rx in zip(xs, wx, strict=True):
            sr = fn(image[y0 : y0 + th, x0 : x0 + tw])
            weight = (ry[:, None] * rx[None, :])[..., None]
            region = np.s_[scale * y0 : scale * (y0 + th), scale * x0 : scale * (x0 + tw)]
            out[region] += weight * sr
            norm[region] += weight
    return out / norm


def _transform(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral transforms of [H, W, C]: bit 0 flips W, bit 1 flips H,
    bit 2 transposes."""
    if k & 1:
        x = x[:, ::-1]
    if k & 2:
        x = x[::-1]
    if k & 4:
        x = x.transpose(1, 0, 2)
    return x


def _inverse_transform(x: np.ndarray, k: int) -> np.ndarray:
    if k & 4:
        x = x.transpose(1, 0, 2)
    if k & 2:
        x = x[::-1]
    if k & 1:
        x = x[:, ::-1]
    return x


def ensemble_x8(fn: UpscaleFn, image: np.ndarray) -> np.ndarray:
    """EDSR+ self-ensemble: mean over the 8 flips/transposes k of T_k^-1(fn(T_k(image)))."""
    image = _check_image(image)
    acc = None
    for k in range(8):
        y = _inverse_transform(fn(np.ascontiguousarray(_transform(image, k))), k)
        acc = y.astype(np.float32) if acc is None else acc + y
    return acc / 8


def upscale_array(
    model: Any,
    variables: Any,
    image: np.ndarray,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    self_ensemble: bool = False,
) -> np.ndarray:
    """Upscales one float RGB image [H, W, 3] in [0, 1] by `model.scale` -> [sH, sW, 3] float32.

    `tile=None` runs the whole image at once (what benchmark scores use); an int runs
    `tile` x `tile` LR tiles overlapping by `overlap` pixels. Output is not clipped.
    """
    fn = model_fn(model, variables)
    if tile is not None:
        fn = functools.partial(upscale_tiled, fn, scale=model.scale, tile=tile, overlap=overlap)
    image = _check_image(image)
    return ensemble_x8(fn, image) if self_ensemble else fn(image)


def main(argv: list[str] | None = None) -> int:
    """Prints tiled-vs-untiled PSNR of a checkpoint on images (each used as the LR input)."""
    parser = argparse.ArgumentParser(
        prog="python -m maffsrn_jax.inference",
        description="PSNR of tiled against untiled output, to choose --tile / --overlap.",
    )
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("images", nargs="+", help="LR input images")
    args = parser.parse_args(argv)

    def body() -> None:
        try:
            check_tiling(args.tile, args.overlap)
        except ValueError as e:
            raise Error(f"--tile {args.tile} --overlap {args.overlap}: {e}") from None
        model, variables = convert.load_pretrained(args.checkpoint)
        fn = model_fn(model, variables)
        for path in args.images:
            x = image_io.to_rgb_uint8(image_io.load_image(path)).astype(np.float32) / 255
            full = np.clip(fn(x), 0, 1)
            tiled = np.clip(
                upscale_tiled(fn, x, scale=model.scale, tile=args.tile, overlap=args.overlap),
                0, 1,
            )
            mse = float(np.mean((tiled - full) ** 2))
            psnr = 10 * np.log10(1 / mse) if mse else float("inf")
            print(f"{path} {x.shape[0]}x{x.shape[1]} tile {args.tile}/{args.overlap}: "
                  f"{psnr:.2f} dB, max |diff| {np.abs(tiled - full).max() * 255:.2f} levels")

    return run_cli(body)


if __name__ == "__main__":
    raise SystemExit(main())
