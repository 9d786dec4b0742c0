"""Image reading/writing: every kind of image round-trips, every bad file is one ImageError."""

from __future__ import annotations

import io
import os
from contextlib import nullcontext

import numpy as np
import png
import pytest
from PIL import Image

from maffsrn_jax.image_io import ImageError, load_image, save_image, to_rgb_uint8


def _rng_image(shape, dtype=np.uint8, seed=0):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


@pytest.mark.parametrize("shape,dtype", [
    ((9, 7), np.uint8), ((9, 7, 3), np.uint8), ((9, 7, 4), np.uint8),
    ((9, 7), np.uint16), ((9, 7, 3), np.uint16), ((9, 7, 4), np.uint16),
])
def test_png_round_trip_keeps_depth_and_channels(tmp_path, shape, dtype):
    arr = _rng_image(shape, dtype)
    path = tmp_path / "img.png"
    save_image(path, arr)
    back = load_image(path)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("interlace", [False, True])
def test_16bit_png_of_every_kind_from_another_writer(tmp_path, interlace):
    # Files this package did not write: interlaced, gray + alpha (read as RGBA, like 8-bit LA),
    # and a tRNS colour key (read as an alpha channel, opaque except on the key colour).
    h, w = 11, 13
    for planes in (1, 2, 3, 4):
        arr = _rng_image((h, w, planes), np.uint16, seed=planes)
        path = tmp_path / f"{planes}.png"
        with open(path, "wb") as f:
            png.Writer(w, h, greyscale=planes < 3, alpha=planes in (2, 4), bitdepth=16,
                       interlace=interlace).write(f, arr.reshape(h, w * planes))
        back = load_image(path)
        want = arr[..., 0] if planes == 1 else arr[..., [0, 0, 0, 1]] if planes == 2 else arr
        assert back.dtype == np.uint16
        np.testing.assert_array_equal(back, want)
    rgb = _rng_image((h, w, 3), np.uint16, seed=9)
    key = tuple(int(v) for v in rgb[2, 3])
    with open(tmp_path / "trns.png", "wb") as f:
        png.Writer(w, h, greyscale=False, bitdepth=16, transparent=key).write(
            f, rgb.reshape(h, w * 3))
    back = load_image(tmp_path / "trns.png")
    assert back.shape == (h, w, 4)
    np.testing.assert_array_equal(back[..., :3], rgb)
    assert back[2, 3, 3] == 0 and (back[..., 3] == 65535).sum() == h * w - (
        (rgb == key).all(axis=2)).sum()


def test_16bit_png_is_written_at_16_bits(tmp_path):
    # Every sample keeps its low byte: a reader that truncated to 8 bits would lose it.
    arr = (_rng_image((5, 6, 3), np.uint8, seed=2).astype(np.uint16) * 256 + 255)
    save_image(tmp_path / "x.png", arr)
    with Image.open(tmp_path / "x.png") as img:
        assert img.format == "PNG"
    with open(tmp_path / "x.png", "rb") as f:
        assert f.read(26)[24] == 16  # IHDR bit depth
    np.testing.assert_array_equal(load_image(tmp_path / "x.png"), arr)


def test_other_modes(tmp_path):
    rgb = _rng_image((6, 5, 3))
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (6, 5, 3)

    p = Image.fromarray(rgb).convert("P")
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    assert load_image(tmp_path / "pt.png").shape == (6, 5, 4)

    Image.fromarray(_rng_image((6, 5, 2))).save(tmp_path / "la.png")  # Gray + alpha.
    la = load_image(tmp_path / "la.png")
    assert la.shape == (6, 5, 4) and np.array_equal(la[..., 0], la[..., 2])

    Image.new("1", (5, 6), 1).save(tmp_path / "b.png")
    one = load_image(tmp_path / "b.png")
    assert one.dtype == np.uint8 and one.shape == (6, 5) and np.all(one == 255)

    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    jpg = load_image(tmp_path / "c.jpg")
    assert jpg.dtype == np.uint8 and jpg.shape == (6, 5, 3)

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "k.tif")
    assert load_image(tmp_path / "k.tif").shape == (6, 5, 3)


def test_to_rgb_uint8():
    gray = np.array([[0, 10], [200, 255]], np.uint8)
    out = to_rgb_uint8(gray)
    assert out.shape == (2, 2, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))

    rgba = _rng_image((3, 4, 4))
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])

    wide = np.array([[0, 128, 129, 257, 32896, 65535]], np.uint16)
    # v * 255 / 65535 rounded: 128 -> 0.498 -> 0, 129 -> 0.502 -> 1, 32896 -> 128.0.
    np.testing.assert_array_equal(to_rgb_uint8(wide)[..., 0], [[0, 0, 1, 1, 128, 255]])
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((2, 2), np.float32))


def _assert_one_line_naming(err: pytest.ExceptionInfo, path) -> None:
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg


def test_bad_files(tmp_path):
    good = tmp_path / "good.png"
    save_image(good, _rng_image((40, 40, 3)))
    data = good.read_bytes()

    cases = {
        "missing.png": None,
        "text.png": b"this is not an image\n",
        "empty.png": b"",
        "truncated.png": data[: len(data) // 2],
        "garbled.png": data[:60] + bytes(200) + data[260:],
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ImageError) as err:
            load_image(path)
        _assert_one_line_naming(err, path)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    save_image(path, np.zeros((40, 50), np.uint8))  # 2000 pixels.
    for limit in (1999, 500):  # Over the limit, and over twice it (Pillow's own error).
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.warns(Image.DecompressionBombWarning) if limit == 1999 else nullcontext():
            with pytest.raises(ImageError, match="decompression bomb") as err:
                load_image(path)
        _assert_one_line_naming(err, path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert load_image(path).shape == (40, 50)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_image(path, _rng_image((8, 8, 3)))
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise KeyboardInterrupt  # E.g. Ctrl-C mid-write.

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_image(path, _rng_image((8, 8, 3), seed=1))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.png"]  # No temporary file left behind.


def test_save_errors(tmp_path):
    for path, arr in [
        (tmp_path / "x.unknownext", _rng_image((4, 4, 3))),
        (tmp_path / "x.jpg", _rng_image((4, 4, 3), np.uint16)),
        (tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8)),
        (tmp_path / "x.png", np.zeros((4, 4, 3), np.float32)),
        (tmp_path / "missing_dir" / "x.png", _rng_image((4, 4, 3))),
    ]:
        with pytest.raises(ImageError) as err:
            save_image(path, arr)
        _assert_one_line_naming(err, path)
    assert not (tmp_path / "missing_dir").exists()


def test_save_other_formats(tmp_path):
    rgb = _rng_image((6, 5, 3))
    for suffix in (".bmp", ".tif", ".jpg"):
        save_image(tmp_path / f"o{suffix}", rgb)
        assert load_image(tmp_path / f"o{suffix}").shape == (6, 5, 3)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")  # Pillow's own PNG of the same pixels reads alike.
    (tmp_path / "pil.png").write_bytes(buf.getvalue())
    np.testing.assert_array_equal(load_image(tmp_path / "pil.png"), rgb)
