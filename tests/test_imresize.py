"""MATLAB-bicubic imresize, rgb2ycbcr luma and modcrop: hand-computed cases and Set5."""

from __future__ import annotations

import numpy as np
import pytest

from maffsrn_jax import image_io
from maffsrn_jax.imresize import _cubic, _round_like_matlab, imresize, modcrop, rgb_to_y

from .conftest import set5_dir


def test_cubic_kernel_values():
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.5, -1.5])
    # (1.5|x|^3 - 2.5|x|^2 + 1) for |x| <= 1; (-0.5|x|^3 + 2.5|x|^2 - 4|x| + 2) for 1 < |x| <= 2.
    want = [1, 0.8671875, 0.5625, 0.2265625, 0, -0.0703125, -0.0625, -0.0234375, 0, 0,
            0.5625, -0.0625]
    np.testing.assert_array_equal(_cubic(x), want)


def test_upscale_x2_hand_computed():
    x = np.array([[1.0, 2.0, 4.0, 8.0, 16.0, 32.0]])
    out = imresize(x, 2)
    assert out.shape == (2, 12) and out.dtype == np.float64
    np.testing.assert_array_equal(out[0], out[1])  # One input row: both output rows copy it.
    # Output 5 (1-based) samples u = 5/2 + 0.25 = 2.75: taps x1..x4 with cubic(1.75),
    # cubic(0.75), cubic(-0.25), cubic(-1.25).
    assert out[0, 4] == pytest.approx(
        -0.0234375 * 1 + 0.2265625 * 2 + 0.8671875 * 4 - 0.0703125 * 8, abs=1e-12)
    # Output 1 samples u = 0.75: taps x(-1), x(0) reflect to x2, x1 (symmetric border).
    assert out[0, 0] == pytest.approx(
        (0.2265625 + 0.8671875) * 1 + (-0.0234375 - 0.0703125) * 2, abs=1e-12)


def test_downscale_x2_hand_computed_antialiased():
    x = np.arange(1.0, 9.0)[None, :]  # 1..8
    out = imresize(x, 1 / 2)
    assert out.shape == (1, 4)
    # Shrinking widens the kernel: h(d) = 0.5 * cubic(0.5 d). Output 2 samples u = 3.5 with
    # taps 0..7 (tap 0 reflects to x1) weighted h(3.5), h(2.5), ..., h(-3.5).
    w = 0.5 * np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875,
                        0.8671875, 0.2265625, -0.0703125, -0.0234375])
    taps = np.array([1, 1, 2, 3, 4, 5, 6, 7], float)
    assert out[0, 1] == pytest.approx(float(w @ taps), abs=1e-12)
    assert out[0, 1] == pytest.approx(3.48828125, abs=1e-12)
    # Inside the image a linear ramp is reproduced exactly (weights symmetric, sum to one).
    ramp = imresize(np.arange(64.0)[None, :], 1 / 4)
    np.testing.assert_allclose(ramp[0, 2:-2], np.arange(64.0).reshape(16, 4).mean(1)[2:-2])


@pytest.mark.parametrize("scale", [2, 3, 4, 5, 6, 7, 8, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 6, 1 / 7,
                                   1 / 8])
def test_shapes_and_constant_images(scale):
    img = np.full((24, 40, 3), 77, np.uint8)
    out = imresize(img, scale)
    want = (round(24 * scale), round(40 * scale), 3) if scale > 1 else (
        int(np.ceil(24 * scale - 1e-9)), int(np.ceil(40 * scale - 1e-9)), 3)
    assert out.shape == want and out.dtype == np.uint8
    assert np.all(out == 77)  # Weights sum to one everywhere, borders included.


def test_uint8_output_is_rounded_float_output():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    for scale in (3, 1 / 3):
        as_float = imresize(img.astype(np.float64), scale)
        if scale == 3:  # Cubic overshoot on noise: floats come back unclipped.
            assert as_float.min() < 0 and as_float.max() > 255
        as_uint8 = imresize(img, scale)
        np.testing.assert_array_equal(as_uint8, np.clip(np.floor(as_float + 0.5), 0, 255))


def test_round_half_away_from_zero_and_saturate():
    x = np.array([0.5, 1.5, 2.5, 0.49999999999999994, -0.4, -0.5, 254.5, 255.5, 300.0])
    np.testing.assert_array_equal(_round_like_matlab(x, np.uint8),
                                  [1, 2, 3, 0, 0, 0, 255, 255, 255])
    np.testing.assert_array_equal(_round_like_matlab(np.array([70000.0, 2.5]), np.uint16),
                                  [65535, 3])


def test_gray_and_channels_resize_alike():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = imresize(rgb, 1 / 2)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], imresize(rgb[..., c], 1 / 2))


def test_output_shape():
    img = np.random.default_rng(2).random((8, 6))
    out = imresize(img, None, output_shape=(4, 12))  # Per-axis ratios 1/2 and 2.
    assert out.shape == (4, 12)
    np.testing.assert_allclose(out, imresize(imresize(img, None, (4, 6)), None, (4, 12)),
                               atol=1e-12)
    # With both, the scale sets the grid: same as the default shape when they agree.
    np.testing.assert_array_equal(imresize(img, 2, output_shape=(16, 12)), imresize(img, 2))


@pytest.mark.parametrize("bad", [dict(scale=0), dict(scale=-2), dict(scale=float("nan")),
                                 dict(scale=None), dict(scale=2, output_shape=(0, 3))])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4)), **bad)


def test_rgb_to_y():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [10, 200, 30]]], np.uint8)
    y = rgb_to_y(img, round=False)
    want = 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255
    np.testing.assert_allclose(y, want, atol=1e-12)
    assert y[0, 0] == 16 and y[0, 1] == pytest.approx(235)
    rounded = rgb_to_y(img)
    assert rounded.dtype == np.float64
    # 16 + 65.481 = 81.481 -> 81; 16 + (654.81 + 25710.6 + 748.98) / 255 = 122.33 -> 122.
    np.testing.assert_array_equal(rounded, [[16, 235, 81, 122]])


def test_rgb_to_y_rounds_like_matlab():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (50, 50, 3), dtype=np.uint8)
    y = rgb_to_y(img, round=False)
    np.testing.assert_array_equal(rgb_to_y(img), np.floor(y + 0.5))
    np.testing.assert_array_equal(rgb_to_y(img.astype(np.float32)), rgb_to_y(img))


def test_modcrop():
    img = np.zeros((13, 10, 3))
    assert modcrop(img, 4).shape == (12, 8, 3)
    assert modcrop(img[..., 0], 3).shape == (12, 9)
    assert modcrop(img, 1).shape == img.shape
    with pytest.raises(ValueError):
        modcrop(img, 0)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_set5_matches_matlab_lr(scale):
    d = set5_dir()
    worst_psnr, worst_diff = np.inf, 0
    for hr_path in sorted((d / "HR").glob("*.png")):
        hr = modcrop(image_io.to_rgb_uint8(image_io.load_image(hr_path)), scale)
        ref = image_io.to_rgb_uint8(
            image_io.load_image(d / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"))
        lr = imresize(hr, 1 / scale)
        assert lr.shape == ref.shape
        diff = lr.astype(np.float64) - ref
        mse = np.mean(diff**2)
        worst_psnr = min(worst_psnr, np.inf if mse == 0 else 10 * np.log10(255**2 / mse))
        worst_diff = max(worst_diff, np.abs(diff).max())
    assert worst_diff <= 2
    assert worst_psnr >= 55


def test_set5_bicubic_x2_psnr():
    # The literature's bicubic baseline (facts sheet): Set5 x2 33.66 dB on rounded Y, shave 2.
    d = set5_dir()
    psnrs = []
    for hr_path in sorted((d / "HR").glob("*.png")):
        hr = modcrop(image_io.to_rgb_uint8(image_io.load_image(hr_path)), 2)
        sr = imresize(imresize(hr, 1 / 2), 2)
        err = (rgb_to_y(sr) - rgb_to_y(hr))[2:-2, 2:-2]
        psnrs.append(10 * np.log10(255**2 / np.mean(err**2)))
    assert np.mean(psnrs) == pytest.approx(33.66, abs=0.02)
