"""Files written whole or not at all, and the image files a folder holds.

Every output of the package (images, JSON reports, converted weights, the metrics log, the
data cache) goes through `write_atomic`: the bytes land in a temporary file beside the target
and are renamed over it, so a crash, a full disk or Ctrl-C leaves either the old file or the
new one, never a partial one, and no temporary file behind.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside `path` (same filesystem, so a rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(
    path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], Any]
) -> None:
    """Writes `data` (bytes, text, or a function writing to a binary file) to `path` atomically.

    The file is flushed to disk before the rename, so after a power loss `path` holds the old
    or the new contents. Permissions follow the umask, as a plain `open` would.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_file_atomic(path: str | os.PathLike, save: Callable[[str], Any]) -> None:
    """Like `write_atomic` for writers that take a file name (safetensors, torch.save)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        save(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """`obj` as indented JSON, atomically; nothing is written if it does not serialise."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def is_image_name(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in `folder` (by extension, hidden files skipped), sorted."""
    return sorted(p for p in Path(folder).iterdir() if is_image_name(p) and p.is_file())
