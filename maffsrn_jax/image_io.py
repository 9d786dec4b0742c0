"""Reading and writing images robustly, shared by the data pipeline, eval and the upscaler.

`load_image` returns the file's own pixels (uint8 or uint16; gray, RGB or RGBA) and turns
every way a file can be bad (missing, unreadable, not an image, truncated, corrupt, a
decompression bomb) into one `ImageError` naming the file. `to_rgb_uint8` is the single
place where odd images become the network's uint8 RGB. `save_image` writes atomically.

Pillow cannot hold 16-bit colour, so every 16-bit PNG (gray, gray + alpha, RGB, RGBA) is read
and written with pypng; everything else goes through Pillow.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import png
from PIL import Image

from maffsrn_jax.errors import Error
from maffsrn_jax.files import write_atomic


class ImageError(Error):
    """A file that cannot be read or written as an image; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # Always a single line.
        super().__init__(f"{self.path}: {self.reason}")


def _check_pixel_limit(img: Image.Image, path: str | os.PathLike) -> None:
    # Pillow itself only raises above twice its limit (and merely warns above it); refusing at
    # the limit keeps the rule simple. Users raise or disable it via Image.MAX_IMAGE_PIXELS.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and img.width * img.height > limit:
        raise ImageError(
            path,
            f"{img.width}x{img.height} pixels exceeds Pillow's limit of {limit} "
            "(possible decompression bomb; raise PIL.Image.MAX_IMAGE_PIXELS to allow it)",
        )


def _read_png_16bit(path: str | os.PathLike) -> np.ndarray | None:
    """The full-precision pixels of a 16-bit PNG, or None if the PNG has fewer bits.

    Gray + alpha becomes RGBA, as in `_to_array`; a tRNS colour key becomes an alpha channel.
    """
    with open(path, "rb") as f:
        reader = png.Reader(file=f)
        reader.preamble()  # the header chunks only
        if reader.bitdepth != 16:
            return None
        width, height, rows, info = reader.asDirect()
        planes = info["planes"]
        arr = np.vstack([np.asarray(row, np.uint16) for row in rows])
    arr = arr.reshape(height, width, planes)
    if planes == 1:
        return arr[..., 0]
    if planes == 2:
        return np.concatenate([arr[..., :1]] * 3 + [arr[..., 1:]], axis=2)
    return arr


def _to_array(img: Image.Image) -> np.ndarray:
    """Decoded Pillow image -> uint8/uint16 array shaped [H, W], [H, W, 3] or [H, W, 4]."""
    mode = img.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(img)
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)  # Native byte order.
    if mode == "I":
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"32-bit integer pixels outside [0, 65535] (mode {mode})")
        return arr.astype(np.uint16)
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        return np.asarray(img.convert("RGBA"))
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"))
    raise ValueError(f"unsupported pixel mode {mode}")


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file's pixels without changing their depth or channel count.

    Args:
        path: any format Pillow reads (PNG, JPEG, BMP, TIFF, WebP, ...). Only the first frame of
            animated files is read.

    Returns:
        uint8 or uint16 array shaped [H, W] (gray), [H, W, 3] (RGB) or [H, W, 4] (RGBA).
        Palette images become RGB(A); gray+alpha becomes RGBA.

    Raises:
        ImageError: missing, unreadable, not an image, truncated or corrupt, over Pillow's
            decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), or an unsupported mode.
    """
    try:
        with Image.open(path) as img:
            _check_pixel_limit(img, path)
            arr = _read_png_16bit(path) if img.format == "PNG" else None
            if arr is None:
                img.load()  # Decode everything now so truncation surfaces here.
                arr = _to_array(img)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageError(path, "is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(path, f"refused as a possible decompression bomb: {e}") from None
    except MemoryError:
        raise ImageError(path, "not enough memory to decode") from None
    except Exception as e:  # Pillow signals corrupt data with many exception types.
        raise ImageError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if min(arr.shape[:2]) < 1:
        raise ImageError(path, f"empty image of shape {arr.shape}")
    return arr


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Any array from `load_image` -> [H, W, 3] uint8 RGB.

    Gray is replicated to three channels, alpha dropped (not composited: SR models see the
    stored colour), and 16-bit values scaled to 8 bits with rounding (v * 255 / 65535).
    """
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"to_rgb_uint8: expected uint8 or uint16 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"to_rgb_uint8: expected HxW or HxWxC (C <= 4), got {arr.shape}")
    if arr.shape[-1] <= 2:  # Gray or gray + alpha.
        return np.repeat(arr[..., :1], 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def _write_png_16bit(f, arr: np.ndarray) -> None:
    """Writes uint16 [H, W] or [H, W, 3|4] `arr` to the binary file `f` as a 16-bit PNG."""
    h, w = arr.shape[:2]
    c = 1 if arr.ndim == 2 else arr.shape[2]
    writer = png.Writer(w, h, greyscale=c == 1, alpha=c == 4, bitdepth=16)
    writer.write(f, arr.reshape(h, w * c))


def save_image(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Writes `arr` to `path` atomically (no partial file on error or interruption).

    Args:
        path: output file; the format follows the suffix (.png, .jpg, .bmp, .tif, .webp, ...).
        arr: uint8 or uint16 [H, W], [H, W, 3] or [H, W, 4]. 16-bit colour needs a .png path.

    Raises:
        ImageError: unsupported array or suffix, or the file could not be written.
    """
    path = Path(path)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype not in (np.uint8, np.uint16) or not (
        arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4))
    ):
        raise ImageError(path, f"cannot save a {arr.dtype} array of shape {arr.shape}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(path, f"unknown image file extension {path.suffix!r}")
    arr = np.ascontiguousarray(arr)
    if arr.dtype == np.uint16 and arr.ndim == 3 and fmt != "PNG":
        raise ImageError(path, "16-bit colour images can only be saved as .png")
    if arr.dtype == np.uint16 and fmt == "PNG":
        write = lambda f: _write_png_16bit(f, arr)
    else:
        img = Image.fromarray(arr)
        write = lambda f: img.save(f, format=fmt)
    try:
        write_atomic(path, write)
    except OSError as e:
        raise ImageError(path, f"cannot write ({e.strerror or e})") from None
    except (ValueError, KeyError, png.Error) as e:  # e.g. RGBA as JPEG
        raise ImageError(path, f"cannot save as {fmt}: {e}") from None
