"""The decode cache: every image decoded once into a memory-mapped uint8 `.npy`.

Entries live under `data.cache_dir` (default `$XDG_CACHE_HOME/maffsrn_jax`, else
`~/.cache/maffsrn_jax`: independent of the workdir, so runs share it). Each is written to a
temporary file and renamed, so a crash mid-build never leaves a corrupt entry, and is named by
the source path plus its size and mtime, so a changed file gets a fresh entry (the stale one is
deleted).
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from maffsrn_jax import image_io
from maffsrn_jax.errors import Error
from maffsrn_jax.files import write_atomic

CACHE_VERSION = 1  # Bump when the decoding or LR recipe changes: old entries are then ignored.
_TEMP_MAX_AGE_S = 3600  # Leftover temp files older than this come from crashed builds.

_log = logging.getLogger(__name__)


class DataError(Error):
    """Bad data or data configuration; the single-line message names every offending file."""


class DataWarning(UserWarning):
    """Data that was usable but partly skipped."""


def _data_error(problems: Sequence[str]) -> DataError:
    if len(problems) == 1:
        return DataError(problems[0])
    return DataError(f"{len(problems)} problems with the data: " + "; ".join(problems))


def default_cache_dir() -> Path:
    """Where decoded images are cached when `data.cache_dir` is empty."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "maffsrn_jax"


def _hash(*parts: object) -> str:
    return hashlib.sha1("\x00".join(map(str, parts)).encode()).hexdigest()


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return _hash(st.st_size, st.st_mtime_ns)[:12]


def _map_npy(path: Path) -> np.ndarray:
    """Read-only memory map of a uint8 [H, W, 3] `.npy` cache entry."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unknown .npy version {version}")
        offset = f.tell()
        count = math.prod(shape)
        size = os.fstat(f.fileno()).st_size
        if (dtype != np.uint8 or fortran or len(shape) != 3 or shape[2] != 3 or count == 0
                or size != offset + count):
            raise ValueError("not a complete uint8 HxWx3 array")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mm, np.uint8, count=count, offset=offset).reshape(shape)


class _Cache:
    """Content-stamped `.npy` entries in one directory, each built at most once."""

    def __init__(self, root: Path):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"data.cache_dir: cannot create {root} ({e.strerror or e})") from None
        self.root = root
        now = time.time()
        for tmp in root.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > _TEMP_MAX_AGE_S:
                    tmp.unlink()
            except OSError:
                pass  # Another process may be cleaning up too.

    def get(self, slot: str, stamp: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        """The mapped entry for (slot, stamp), calling `build()` first if it is missing."""
        path = self.root / f"{slot}-{stamp}.npy"
        if path.exists():
            try:
                return _map_npy(path)
            except (OSError, ValueError) as e:
                _log.warning("Rebuilding unreadable cache entry %s (%s)", path, e)
        arr = np.ascontiguousarray(build(), dtype=np.uint8)
        try:
            # Concurrent builders of one entry write identical bytes.
            write_atomic(path, lambda f: np.lib.format.write_array(f, arr, allow_pickle=False))
        except OSError as e:  # Disk full, read-only cache, ...
            raise DataError(f"data.cache_dir: cannot write {path} ({e.strerror or e})") from None
        for stale in self.root.glob(f"{slot}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        return _map_npy(path)


def _cached_file(cache: _Cache, path: Path) -> np.ndarray:
    """The RGB uint8 decode of an image file, through the cache."""
    try:
        stamp = _file_stamp(path)
    except OSError as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        raise image_io.ImageError(path, reason) from None
    return cache.get(_hash(CACHE_VERSION, "rgb", path.resolve()), stamp,
                     lambda: image_io.to_rgb_uint8(image_io.load_image(path)))
