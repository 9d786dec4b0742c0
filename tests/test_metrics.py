"""PSNR/SSIM by MATLAB conventions: hand-computed cases and scikit-image as an independent check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import skimage.data
from skimage.metrics import structural_similarity

from maffsrn_jax import image_io, metrics
from maffsrn_jax.imresize import imresize, modcrop, rgb_to_y

from .conftest import set5_dir


def _skimage_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None = None) -> float:
    """scikit-image's SSIM with ssim_index.m's options, averaged over the 'valid' region."""
    _, full = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        full=True, channel_axis=channel_axis,
    )
    return float(full[5:-5, 5:-5].mean())


def _bicubic_pair(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(bicubic SR, HR) uint8: a realistic pair with typical SR errors."""
    hr = modcrop(hr, scale)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    lr = imresize(hr, 1 / scale, output_shape=(h, w))
    return imresize(lr, scale, output_shape=hr.shape[:2]), hr


# --- quantize ---------------------------------------------------------------------------------


def test_quantize_clips_and_rounds_half_up():
    x = np.array([-0.3, 0.0, 0.4 / 255, 0.5 / 255, 254.5 / 255, 1.0, 1.7])
    np.testing.assert_array_equal(metrics.quantize(x), [0, 0, 0, 1, 255, 255, 255])
    assert metrics.quantize(x).dtype == np.uint8


def test_quantize_16bit():
    x = np.array([0.5, 1.0, 2.0, -1.0])
    out = metrics.quantize(x, np.uint16)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [32768, 65535, 65535, 0])  # 32767.5 rounds up.


# --- PSNR -------------------------------------------------------------------------------------


def test_psnr_hand_computed_gray():
    hr = np.full((10, 12), 100, np.uint8)
    sr = hr.copy()
    sr[4, 5] = 110  # Inside the region kept after shaving 1 px: 8 x 10 = 80 pixels.
    sr[0, 0] = 0  # In the shaved border: must not count.
    expected = 10 * math.log10(255**2 / (100 / 80))
    assert metrics.psnr(sr, hr, scale=1) == pytest.approx(expected, abs=1e-12)
    # Shaving 2 px per border keeps 6 x 8 pixels.
    assert metrics.psnr(sr, hr, scale=2) == pytest.approx(
        10 * math.log10(255**2 / (100 / 48)), abs=1e-12
    )


def test_psnr_identical_is_inf_and_border_only_differences_are_shaved():
    hr = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    sr = hr.copy()
    sr[:3] = 0  # Differences only in the top 3 rows.
    assert metrics.psnr(hr, hr, scale=2) == math.inf
    assert metrics.psnr(sr, hr, scale=3) == math.inf
    assert math.isfinite(metrics.psnr(sr, hr, scale=2))


def test_psnr_rounded_y_versus_unrounded_y_versus_rgb():
    hr = np.zeros((8, 8, 3), np.uint8)
    sr = hr.copy()
    sr[..., 0] = 1  # Y = 16 + 65.481 / 255 = 16.2568: rounds back to 16.
    assert metrics.psnr(sr, hr, scale=1) == math.inf
    dy = 65.481 / 255
    assert metrics.psnr(sr, hr, scale=1, rounded_y=False) == pytest.approx(
        10 * math.log10(255**2 / dy**2), abs=1e-9
    )
    # All channels: one channel off by one level -> MSE 1/3.
    assert metrics.psnr(sr, hr, scale=1, y_only=False) == pytest.approx(
        10 * math.log10(3 * 255**2), abs=1e-12
    )


def test_psnr_y_matches_rgb2ycbcr_by_hand():
    rng = np.random.default_rng(1)
    sr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)

    def y(im):  # MATLAB rgb2ycbcr's Y, rounded half away from zero (all values are positive).
        im = im.astype(np.float64)
        return np.floor(16 + (65.481 * im[..., 0] + 128.553 * im[..., 1] + 24.966 * im[..., 2])
                        / 255 + 0.5)

    mse = np.mean((y(sr) - y(hr))[2:-2, 2:-2] ** 2)
    assert metrics.psnr(sr, hr, scale=2) == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-9)


def test_unrounded_psnr_matches_the_edsr_formula():
    """EDSR's calc_psnr: Y of the difference image with the /256 coefficients, no rounding."""
    sr, hr = _bicubic_pair(skimage.data.astronaut()[:160, :200], 3)
    diff = (sr.astype(np.float64) - hr) / 255
    y = diff @ (np.array([65.738, 129.057, 25.064]) / 256)
    mse = np.mean(y[3:-3, 3:-3] ** 2)
    edsr = -10 * np.log10(mse)
    ours = metrics.psnr(sr, hr, scale=3, rounded_y=False)
    # The two coefficient sets differ in the 6th digit.
    assert ours == pytest.approx(edsr, abs=2e-3)
    assert ours != metrics.psnr(sr, hr, scale=3)


# --- SSIM -------------------------------------------------------------------------------------


def test_ssim_of_constant_images_by_hand():
    a = np.full((21, 23), 100, np.uint8)
    b = np.full((21, 23), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    # Zero variances: the contrast-structure term is c2 / c2.
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)
    assert metrics.ssim(a, b, scale=2) == pytest.approx(expected, abs=1e-12)
    assert metrics.ssim(a, a, scale=2) == pytest.approx(1.0, abs=1e-12)


def test_ssim_valid_region_size():
    rng = np.random.default_rng(2)
    a, b = (rng.random((30, 40)) * 255 for _ in range(2))
    assert metrics.ssim_map(a, b).shape == (20, 30)


def test_ssim_matches_skimage_on_y_and_rgb():
    sr, hr = _bicubic_pair(skimage.data.chelsea()[:180, :240], 2)
    ys, yh = (rgb_to_y(im)[2:-2, 2:-2] for im in (sr, hr))
    assert metrics.ssim(sr, hr, scale=2) == pytest.approx(_skimage_ssim(ys, yh), abs=1e-12)
    ys, yh = (rgb_to_y(im, round=False)[2:-2, 2:-2] for im in (sr, hr))
    assert metrics.ssim(sr, hr, scale=2, rounded_y=False) == pytest.approx(
        _skimage_ssim(ys, yh), abs=1e-12
    )
    rgb_s, rgb_h = (im[2:-2, 2:-2].astype(np.float64) for im in (sr, hr))
    assert metrics.ssim(sr, hr, scale=2, y_only=False) == pytest.approx(
        _skimage_ssim(rgb_s, rgb_h, channel_axis=2), abs=1e-12
    )


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_ssim_matches_skimage_on_set5(scale):
    d = set5_dir()
    for path in sorted((d / "HR").glob("*.png"))[:2]:
        sr, hr = _bicubic_pair(image_io.to_rgb_uint8(image_io.load_image(path)), scale)
        s = scale
        ref = _skimage_ssim(rgb_to_y(sr)[s:-s, s:-s], rgb_to_y(hr)[s:-s, s:-s])
        assert metrics.ssim(sr, hr, scale=scale) == pytest.approx(ref, abs=1e-12)


# --- input checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sr, hr, match",
    [
        (np.zeros((20, 20, 3), np.float32), np.zeros((20, 20, 3), np.uint8), "uint8"),
        (np.zeros((20, 20, 3), np.uint8), np.zeros((20, 22, 3), np.uint8), "differ"),
        (np.zeros((20, 20, 4), np.uint8), np.zeros((20, 20, 4), np.uint8), "shape"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), "nothing left"),
    ],
)
def test_bad_inputs_raise(sr, hr, match):
    with pytest.raises(ValueError, match=match):
        metrics.psnr(sr, hr, scale=4)


def test_ssim_needs_a_full_window():
    a = np.zeros((14, 30), np.uint8)
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(a, a, scale=2)
