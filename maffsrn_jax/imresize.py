"""MATLAB-compatible bicubic resizing and the colour helpers the SR literature uses.

Published super-resolution numbers are computed on low-resolution images made by MATLAB's
`imresize(hr, 1/s, 'bicubic')` and scored on MATLAB's `rgb2ycbcr` luma, so these functions
follow MATLAB's arithmetic rather than PIL's or OpenCV's (which differ by several dB):

* cubic kernel with A = -0.5, widened by 1/scale when shrinking (antialiasing);
* output pixel `i` (1-based) samples input coordinate `i / scale + 0.5 * (1 - 1 / scale)`;
* out-of-range taps are reflected symmetrically (`... 2 1 1 2 ... n n n-1 ...`);
* every weight row is normalised to sum to one, all in float64;
* the dimension with the smaller scale is resized first;
* integer images are rounded half away from zero and saturated, as MATLAB's casts do.
"""

from __future__ import annotations

import math

import numpy as np


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with A = -0.5 (MATLAB's `cubic`)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-pixel weights and 0-based input indices along one axis.

    Returns:
        (weights, indices), both shaped [out_len, taps]; each weight row sums to one.
    """
    if scale < 1:
        # Antialiasing: stretch the kernel so it low-passes at the output's Nyquist rate.
        kernel = lambda x: scale * _cubic(scale * x)
        width = 4.0 / scale
    else:
        kernel = _cubic
        width = 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)  # 1-based, may be out of range.
    weights = kernel(u[:, None] - indices)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    # MATLAB's symmetric padding: index sequence 1..n, n..1 repeated.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def _resize_axis(x: np.ndarray, axis: int, out_len: int, scale: float) -> np.ndarray:
    """Resizes `x` along `axis` (0 or 1), returning float64."""
    weights, indices = _contributions(x.shape[axis], out_len, scale)
    bcast = [1] * x.ndim
    bcast[axis] = out_len
    # Accumulate tap by tap, as MATLAB's imresizemex does, so sums round the same way.
    out = weights[:, 0].reshape(bcast) * np.take(x, indices[:, 0], axis=axis)
    for k in range(1, weights.shape[1]):
        out += weights[:, k].reshape(bcast) * np.take(x, indices[:, k], axis=axis)
    return out


def _output_len(in_len: int, scale: float) -> int:
    # MATLAB uses ceil(scale * n); snap products within rounding error of an integer so that
    # e.g. n * (1/3) for n divisible by 3 never rounds up to n / 3 + 1.
    size = scale * in_len
    return int(round(size)) if abs(size - round(size)) < 1e-9 else math.ceil(size)


def _round_like_matlab(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rounds half away from zero and saturates to the integer `dtype`'s range."""
    info = np.iinfo(dtype)
    magnitude = np.abs(x)
    whole = np.floor(magnitude)
    # magnitude - whole is exact, unlike floor(x + 0.5), which rounds 0.49999999999999994 up.
    rounded = np.copysign(whole + (magnitude - whole >= 0.5), x)
    return np.clip(rounded, info.min, info.max).astype(dtype)


def imresize(
    image: np.ndarray,
    scale: float | None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """MATLAB `imresize(image, scale, 'bicubic')`.

    Args:
        image: [H, W] or [H, W, C] array. Integer images (uint8, uint16) are resized in float64
            and returned rounded and saturated to their own dtype; float images return float64,
            unclipped.
        scale: output/input size ratio, the same for both axes (2 enlarges, 1/2 shrinks). May be
            None when `output_shape` is given.
        output_shape: (H_out, W_out). Default: ceil(scale * (H, W)). When given without `scale`,
            each axis uses its own ratio H_out/H, W_out/W (MATLAB's `imresize(image, [m n])`);
            when given with `scale`, `scale` sets the sampling grid and kernel and
            `output_shape` only the number of output pixels.

    Returns:
        The resized [H_out, W_out(, C)] array.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize: expected an HxW or HxWxC image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"imresize: empty image of shape {image.shape}")
    in_shape = image.shape[:2]
    if scale is None and output_shape is None:
        raise ValueError("imresize: give a scale, an output_shape or both")
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"imresize: scale must be a positive number, got {scale}")
    if output_shape is None:
        output_shape = (_output_len(in_shape[0], scale), _output_len(in_shape[1], scale))
    output_shape = tuple(int(n) for n in output_shape)
    if len(output_shape) != 2 or min(output_shape) < 1:
        raise ValueError(f"imresize: output_shape must be two positive sizes, got {output_shape}")
    if scale is None:
        scales = (output_shape[0] / in_shape[0], output_shape[1] / in_shape[1])
    else:
        scales = (float(scale), float(scale))

    is_int = np.issubdtype(image.dtype, np.integer)
    if not is_int and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"imresize: unsupported dtype {image.dtype}")
    out = image if is_int else image.astype(np.float64)
    # Stable sort: with equal scales MATLAB resizes rows (axis 0) first.
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        out = _resize_axis(out, axis, output_shape[axis], scales[axis])
    return _round_like_matlab(out, image.dtype) if is_int else out


def rgb_to_y(image: np.ndarray, *, round: bool = True) -> np.ndarray:
    """Luma of MATLAB's `rgb2ycbcr` for an RGB image on the [0, 255] scale.

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255, in [16, 235].

    Args:
        image: [H, W, 3] uint8 or float array with values in [0, 255].
        round: True gives MATLAB's uint8 result (rounded half away from zero), as the published
            tables use; False keeps the unrounded value (the EDSR-style variant).

    Returns:
        [H, W] float64.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"rgb_to_y: expected an HxWx3 RGB image, got shape {image.shape}")
    rgb = image.astype(np.float64)
    y = (
        65.481 / 255 * rgb[..., 0] + 128.553 / 255 * rgb[..., 1] + 24.966 / 255 * rgb[..., 2]
    ) + 16.0
    if round:
        y = _round_like_matlab(y, np.uint8).astype(np.float64)
    return y


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crops the bottom/right edges so height and width are multiples of `scale`.

    Args:
        image: [H, W] or [H, W, C].
        scale: a positive integer.

    Returns:
        A view shaped [H - H % scale, W - W % scale(, C)].
    """
    if int(scale) != scale or scale < 1:
        raise ValueError(f"modcrop: scale must be a positive integer, got {scale}")
    scale = int(scale)
    h, w = image.shape[:2]
    return image[: h - h % scale, : w - w % scale]
