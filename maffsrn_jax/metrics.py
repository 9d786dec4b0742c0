"""PSNR and SSIM by the conventions of the published super-resolution tables.

The defaults reproduce the MATLAB protocol the MAFFSRN paper follows (via VDSR): both images are
uint8, converted to the Y channel of MATLAB's `rgb2ycbcr` and rounded to uint8 as MATLAB does for
uint8 input, `scale` pixels are shaved from every border, PSNR uses a peak of 255, and SSIM is
Wang et al.'s `ssim_index.m`: an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255,
'valid' filtering (5 more pixels lost per border) and the mean of the SSIM map.

Options:
- `rounded_y=False`: the EDSR-style variant the official training code logs (Y computed from the
  images without rounding; numerically the same as EDSR's Y of the difference image).
- `y_only=False`: on all channels (SSIM is the mean of the per-channel SSIMs).

Single-channel [H, W] images are scored as they are (as the MATLAB scripts do for gray images).
Model output is float; `quantize` turns it into the uint8 image that published numbers score.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from maffsrn_jax.imresize import rgb_to_y

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PEAK = 255.0


def quantize(image: np.ndarray, dtype: np.dtype = np.uint8) -> np.ndarray:
    """Float image in [0, 1] (any shape; values outside are clipped) -> integer `dtype`.

    round(clip(x, 0, 1) * max) with max = 255 for uint8 (65535 for uint16), rounding half up
    like MATLAB's `im2uint8` on non-negative values.
    """
    peak = np.iinfo(dtype).max
    x = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * peak
    return np.floor(x + 0.5).astype(dtype)


def _prepare(
    sr: np.ndarray, hr: np.ndarray, scale: int, y_only: bool, rounded_y: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Checks two uint8 images and returns their scored planes as float64 [C, H', W']."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    for name, im in (("sr", sr), ("hr", hr)):
        if im.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8, got {im.dtype}")
        if im.ndim not in (2, 3) or (im.ndim == 3 and im.shape[2] not in (1, 3)):
            raise ValueError(f"{name} must be [H, W] or [H, W, 1 or 3], got shape {im.shape}")
    if sr.shape != hr.shape:
        raise ValueError(f"sr and hr shapes differ: {sr.shape} vs {hr.shape}")
    if not isinstance(scale, (int, np.integer)) or scale < 0:
        raise ValueError(f"scale must be a non-negative integer (the border shave), got {scale!r}")

    if sr.ndim == 3 and sr.shape[2] == 1:
        sr, hr = sr[..., 0], hr[..., 0]
    if sr.ndim == 2:
        planes = [sr[None].astype(np.float64), hr[None].astype(np.float64)]
    elif y_only:
        planes = [rgb_to_y(im, round=rounded_y)[None] for im in (sr, hr)]
    else:
        planes = [np.moveaxis(im, -1, 0).astype(np.float64) for im in (sr, hr)]

    h, w = planes[0].shape[1:]
    if h <= 2 * scale or w <= 2 * scale:
        raise ValueError(f"image {h}x{w} has nothing left after shaving {scale} px per border")
    crop = (slice(None), slice(scale, h - scale), slice(scale, w - scale))
    return planes[0][crop], planes[1][crop]


def psnr(
    sr: np.ndarray, hr: np.ndarray, *, scale: int, y_only: bool = True, rounded_y: bool = True
) -> float:
    """PSNR in dB of uint8 `sr` against uint8 `hr` ([H, W] or [H, W, 3]), peak 255.

    `scale` pixels are shaved from each border. Identical images give `inf`.
    """
    a, b = _prepare(sr, hr, scale, y_only, rounded_y)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(PEAK**2 / mse))


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    # MATLAB's fspecial('gaussian', 11, 1.5) normalised over the 2-D window equals the outer
    # product of this normalised 1-D kernel, so the filter can run separably.
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of [..., H, W] with g (x) g -> [..., H-k+1, W-k+1]."""
    x = sliding_window_view(x, len(g), axis=-2) @ g
    return sliding_window_view(x, len(g), axis=-1) @ g


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of two float planes [..., H, W] on a 0..255 scale, as `ssim_index.m` computes it.

    Returns [..., H - 10, W - 10] (the 'valid' region of the 11x11 window).
    """
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after shaving, got "
            f"{a.shape[-2]}x{a.shape[-1]}"
        )
    c1 = (SSIM_K1 * PEAK) ** 2
    c2 = (SSIM_K2 * PEAK) ** 2
    # One filtering pass over the five stacked moment images.
    stats = _filter_valid(np.stack([a, b, a * a, b * b, a * b]), _gaussian_1d())
    mu_a, mu_b, e_aa, e_bb, e_ab = stats
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return num / den


def ssim(
    sr: np.ndarray, hr: np.ndarray, *, scale: int, y_only: bool = True, rounded_y: bool = True
) -> float:
    """Mean SSIM of uint8 `sr` against uint8 `hr` ([H, W] or [H, W, 3]).

    `scale` pixels are shaved from each border, then the 11x11 window's 'valid' region is
    averaged; with `y_only=False` the per-channel means are averaged.
    """
    a, b = _prepare(sr, hr, scale, y_only, rounded_y)
    return float(np.mean(ssim_map(a, b)))
