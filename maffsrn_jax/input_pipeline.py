"""Training and validation data: sources, an on-disk decode cache, the patch sampler, prefetch.

Sources (`data.source`), each giving aligned (LR, HR) uint8 RGB pairs:

* `embedded`: colour and gray photographs shipped inside scikit-image's package directory, so
  training runs offline on a fresh machine; a fixed few are held out for validation.
* `div2k`: a local DIV2K tree (`DIV2K_train_HR/0001.png`,
  `DIV2K_train_LR_bicubic/X2/0001x2.png` and the `valid` twins); `data.train_range` /
  `data.val_range` pick images by number from both HR folders.
* `benchmark`: the EDSR benchmark layout (`HR/<name>.png`, `LR_bicubic/X{s}/<name>x{s}.png`).
* `folder`: any folder of HR images.
* `tfds`: the TFDS catalog's `div2k/bicubic_x{s}` (features `lr`, `hr`), prepared beforehand
  (never downloaded here; needs tensorflow installed).

Where LR files are absent (a `folder`, or a DIV2K/benchmark tree without an `X{s}` LR folder)
LR = MATLAB-bicubic `imresize(modcrop(HR, s), 1/s)`, the literature's degradation. HR images
not divisible by the scale are mod-cropped. Without `data.val_dir`, the `folder` and
`benchmark` sources hold out their last `data.val_fraction` of images (sorted by name).

Cache: every image is decoded once into an uncompressed uint8 `.npy` under `data.cache_dir`
(default `$XDG_CACHE_HOME/maffsrn_jax`, else `~/.cache/maffsrn_jax`: independent of the
workdir, so runs share it) and then memory-mapped. Entries are written to a temporary file
and renamed, so a crash mid-build never leaves a corrupt entry, and are named by the source
path plus its size and mtime, so a changed file gets a fresh entry (the stale one is deleted).

Sampling: `batch_at(dataset, step, ...)` is a pure function of (seed, step): random image,
random aligned crop, horizontal flip, vertical flip and transpose (each p = 0.5, as the
official code). The global batch is drawn whole and each process keeps its contiguous slice,
so any process count sees the same data. `train_iterator` computes those batches ahead on
background threads. Resident memory stays bounded whatever the dataset size: mapped pages
that sampling touched are handed back to the page cache past a budget (see `PairDataset`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import mmap
import os
import re
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from maffsrn_jax import image_io
from maffsrn_jax.errors import first_line
from maffsrn_jax.imresize import imresize, modcrop

SOURCES = ("embedded", "div2k", "benchmark", "folder", "tfds")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# scikit-image's bundled photographs (package files, read offline). Validation images are
# different scenes from every training image.
EMBEDDED_TRAIN = (
    "astronaut.png",
    "camera.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
)
EMBEDDED_VAL = ("chelsea.png", "coffee.png", "rocket.jpg")

_CACHE_VERSION = 1  # Bump when the decoding or LR recipe changes: old entries are then ignored.
_TEMP_MAX_AGE_S = 3600  # Leftover temp files older than this come from crashed builds.

_log = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad data or data configuration; the single-line message names every offending file."""


class DataWarning(UserWarning):
    """Data that was usable but partly skipped."""


def _data_error(problems: Sequence[str]) -> DataError:
    if len(problems) == 1:
        return DataError(problems[0])
    return DataError(f"{len(problems)} problems with the data: " + "; ".join(problems))


def default_data_config() -> ml_collections.ConfigDict:
    """The `data` block of a training config, with every field documented."""
    c = ml_collections.ConfigDict()
    # One of SOURCES: 'embedded' | 'div2k' | 'benchmark' | 'folder' | 'tfds'.
    c.source = "embedded"
    # Root folder of the div2k / benchmark / folder sources.
    c.dir = ""
    # div2k: image numbers for training and validation, 'FIRST-LAST' (inclusive). Numbers are
    # looked up in both DIV2K_train_HR/ and DIV2K_valid_HR/ (the official split: 801-900 are
    # the valid folder); numbers with no file are not an error, an empty selection is.
    c.train_range = "1-800"
    c.val_range = "801-900"
    # Optional separate validation data (e.g. benchmark/Set5): a benchmark tree, a DIV2K tree
    # (uses val_range) or a folder of HR images; the layout is detected. Overrides the split
    # of the training source.
    c.val_dir = ""
    # folder / benchmark sources without val_dir: the last fraction of images (by file name)
    # is held out for validation (at least one when there are two or more images).
    c.val_fraction = 0.1
    # tfds: dataset name ('{scale}' is filled in), data dir ('' = TFDS's default) and splits.
    c.tfds_name = "div2k/bicubic_x{scale}"
    c.tfds_data_dir = ""
    c.tfds_train_split = "train"
    c.tfds_val_split = "validation"
    # Decoded-image cache; '' = $XDG_CACHE_HOME/maffsrn_jax, else ~/.cache/maffsrn_jax.
    c.cache_dir = ""
    # Background threads computing batches, and how many batches they may run ahead.
    c.num_threads = 2
    c.prefetch = 4
    return c


# ----------------------------------------------------------------------------------------
# The cache.


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
        tmp = self.root / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
            os.replace(tmp, path)  # Concurrent builders of one entry write identical bytes.
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):  # Disk full, read-only cache, ...
                raise DataError(f"data.cache_dir: cannot write {path} ({e.strerror or e})"
                                ) from None
            raise
        for stale in self.root.glob(f"{slot}-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
        return _map_npy(path)


# ----------------------------------------------------------------------------------------
# Datasets.


def _find_mmap(arr: np.ndarray) -> mmap.mmap | None:
    base = arr
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return None


class PairDataset:
    """Aligned (LR, HR) uint8 RGB image pairs, usually memory-mapped from the cache.

    Mapped pages that were read count towards the process's resident memory until released.
    Once reads (random crops in `batch_at`, whole images via `pair`) may have touched more
    than `resident_budget_bytes`, the touched maps are handed back with
    `madvise(MADV_DONTNEED)` (the data stays in the OS page cache, and arrays already handed
    out stay valid), which keeps RSS bounded whatever the dataset size.
    """

    resident_budget_bytes = 256 << 20

    def __init__(
        self,
        names: Sequence[str],
        lrs: Sequence[np.ndarray],
        hrs: Sequence[np.ndarray],
        scale: int,
    ):
        """Args: names; lrs[i] uint8 [h, w, 3]; hrs[i] uint8 [scale*h, scale*w, 3]."""
        if not len(names) == len(lrs) == len(hrs):
            raise ValueError("PairDataset: names, lrs and hrs differ in length")
        for name, lr, hr in zip(names, lrs, hrs, strict=True):
            if (lr.dtype != np.uint8 or hr.dtype != np.uint8 or lr.ndim != 3 or lr.shape[2] != 3
                    or hr.shape != (lr.shape[0] * scale, lr.shape[1] * scale, 3)):
                raise ValueError(
                    f"PairDataset: {name}: need uint8 LR [h, w, 3] and HR [{scale}h, {scale}w, 3],"
                    f" got {lr.dtype} {lr.shape} and {hr.dtype} {hr.shape}")
        self.names = list(names)
        self.scale = int(scale)
        self._lrs = list(lrs)
        self._hrs = list(hrs)
        self.lr_shapes = np.array([lr.shape[:2] for lr in lrs], np.int64).reshape(-1, 2)
        maps = {id(m): m for a in (*lrs, *hrs) if (m := _find_mmap(a)) is not None}
        self._maps = [[_find_mmap(lr), _find_mmap(hr)] for lr, hr in zip(lrs, hrs, strict=True)]
        self._trim = hasattr(mmap, "MADV_DONTNEED") and sum(
            len(m) for m in maps.values()) > self.resident_budget_bytes
        self._lock = threading.Lock()
        self._touched: set[int] = set()
        self._touched_bytes = 0

    def __len__(self) -> int:
        return len(self.names)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(LR uint8 [h, w, 3], HR uint8 [s*h, s*w, 3]), read-only views of whole images."""
        lr, hr = self._lrs[i], self._hrs[i]
        self._note_reads(np.array([i]))  # E.g. a validation pass.
        return lr, hr

    def _note_reads(self, indices: np.ndarray) -> None:
        """Records reads of images `indices`; releases touched pages past the budget."""
        if not self._trim:
            return
        with self._lock:
            # Count whole images: the kernel maps pages around each fault (64 KiB or a whole
            # large folio), so the rows a crop reads are no bound on what becomes resident.
            for i in set(indices.tolist()) - self._touched:
                self._touched.add(i)
                self._touched_bytes += self._lrs[i].nbytes + self._hrs[i].nbytes
            if self._touched_bytes <= self.resident_budget_bytes:
                return
            release, self._touched, self._touched_bytes = self._touched, set(), 0
        for i in release:
            for m in self._maps[i]:
                if m is not None:
                    m.madvise(mmap.MADV_DONTNEED)


@dataclasses.dataclass(frozen=True)
class _PairSpec:
    name: str
    hr: Path
    lr: Path | None  # None: LR = imresize(modcrop(HR)), made here.


def _list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _no_images(folder: Path) -> str:
    return f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})"


def _with_lr_files(
    hr_paths: Sequence[Path], lr_dir: Path, scale: int, problems: list[str]
) -> list[_PairSpec]:
    """Pairs each HR with `lr_dir/<stem>x<scale>.*`; LR made here if `lr_dir` is absent."""
    if not lr_dir.is_dir():
        _log.info("No %s: making LR images with MATLAB-bicubic imresize", lr_dir)
        return [_PairSpec(p.stem, p, None) for p in hr_paths]
    lr_files = {p.stem: p for p in _list_images(lr_dir)}
    specs = []
    for hr in hr_paths:
        lr = lr_files.get(f"{hr.stem}x{scale}")
        if lr is None:
            problems.append(f"{hr}: no LR image {lr_dir / f'{hr.stem}x{scale}.png'}")
        else:
            specs.append(_PairSpec(hr.stem, hr, lr))
    return specs


def _parse_range(text: str, field: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise DataError(f"data.{field}: expected 'FIRST-LAST' such as '1-800', got {text!r}")
    first = int(m.group(1))
    return range(first, int(m.group(2) or first) + 1)


def _div2k_specs(
    root: Path, numbers: range, scale: int, problems: list[str], *, required: bool = True
) -> list[_PairSpec]:
    """DIV2K pairs numbered `numbers`; none found is a problem if `required`, else a warning."""
    specs, known_problems = [], len(problems)
    for split in ("train", "valid"):
        hr_dir = root / f"DIV2K_{split}_HR"
        if not hr_dir.is_dir():
            continue
        hrs = [p for p in _list_images(hr_dir) if p.stem.isdigit() and int(p.stem) in numbers]
        lr_dir = root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}"
        specs += _with_lr_files(hrs, lr_dir, scale, problems)
    if not specs and len(problems) == known_problems:
        missing = (f"{root}: no DIV2K_train_HR/ or DIV2K_valid_HR/ images numbered "
                   f"{numbers.start}-{numbers.stop - 1}")
        if required:
            problems.append(missing)
        else:
            warnings.warn(f"{missing}: no validation images (set data.val_range or "
                          "data.val_dir)", DataWarning, stacklevel=4)
    return sorted(specs, key=lambda s: s.name)


def _benchmark_specs(root: Path, scale: int, problems: list[str]) -> list[_PairSpec]:
    hrs = _list_images(root / "HR")
    if not hrs:
        problems.append(_no_images(root / "HR"))
    return _with_lr_files(hrs, root / "LR_bicubic" / f"X{scale}", scale, problems)


def _folder_specs(root: Path, problems: list[str]) -> list[_PairSpec]:
    hrs = _list_images(root)
    if not hrs:
        problems.append(_no_images(root))
    return [_PairSpec(p.stem, p, None) for p in hrs]


def _embedded_specs(names: Sequence[str], problems: list[str]) -> list[_PairSpec]:
    # The files only: importing scikit-image itself would cost time and memory for nothing.
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source='embedded' needs scikit-image installed")
    root = Path(spec.submodule_search_locations[0]) / "data"
    specs = []
    for name in names:
        path = root / name
        if path.is_file():
            specs.append(_PairSpec(path.stem, path, None))
        else:
            problems.append(f"{path}: embedded image missing from this scikit-image install")
    return specs


def detect_source(path: str | os.PathLike) -> str:
    """'benchmark' (has HR/), 'div2k' (has DIV2K_*_HR/) or 'folder' for a data folder."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: not a directory")
    if (path / "HR").is_dir():
        return "benchmark"
    if any((path / f"DIV2K_{split}_HR").is_dir() for split in ("train", "valid")):
        return "div2k"
    return "folder"


def _holdout(specs: list[_PairSpec], fraction: float) -> tuple[list, list]:
    n = len(specs)
    k = 0 if n < 2 or fraction <= 0 else min(max(round(n * fraction), 1), n - 1)
    return specs[: n - k], specs[n - k:]


def _dir_specs(
    cfg: ml_collections.ConfigDict, field: str, scale: int, problems: list[str]
) -> tuple[list[_PairSpec], list[_PairSpec] | None]:
    """Pairs of the folder named by `cfg.<field>` ('dir' or 'val_dir').

    Returns:
        (pairs, validation pairs) for a DIV2K tree named by `dir` without a `val_dir` (split by
        the ranges); otherwise (all pairs, None).
    """
    text = cfg[field]
    if not text:
        raise DataError(f"data.{field}: no folder given")
    root = Path(os.path.expanduser(text))
    if not root.is_dir():
        raise DataError(f"data.{field}: {root} is not a directory")
    layout = detect_source(root) if field == "val_dir" else cfg.source
    if layout == "div2k":
        val_range = _parse_range(cfg.val_range, "val_range")
        if field == "val_dir":
            return _div2k_specs(root, val_range, scale, problems), None
        train = _div2k_specs(root, _parse_range(cfg.train_range, "train_range"), scale, problems)
        if cfg.val_dir:
            return train, None
        return train, _div2k_specs(root, val_range, scale, problems, required=False)
    if layout == "benchmark":
        return _benchmark_specs(root, scale, problems), None
    return _folder_specs(root, problems), None


@dataclasses.dataclass
class _Built:
    name: str
    lr: np.ndarray | None = None
    hr: np.ndarray | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    too_small: bool = False


def _cached_file(cache: _Cache, path: Path) -> np.ndarray:
    """The RGB uint8 decode of an image file, through the cache."""
    try:
        stamp = _file_stamp(path)
    except OSError as e:
        reason = "no such file" if isinstance(e, FileNotFoundError) else (e.strerror or str(e))
        raise image_io.ImageError(path, reason) from None
    return cache.get(_hash(_CACHE_VERSION, "rgb", path.resolve()), stamp,
                     lambda: image_io.to_rgb_uint8(image_io.load_image(path)))


def _check_pair(name: str, lr: np.ndarray, hr_full: np.ndarray, scale: int, min_lr: int,
                lr_ref: str, hr_ref: str) -> _Built:
    """Mod-crops HR and checks the pair: too small to use, mismatched, or good."""
    hr = modcrop(hr_full, scale)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if min(h, w) < max(min_lr, 1):
        return _Built(name, too_small=True)
    if lr.shape[:2] != (h, w):
        return _Built(name, problems=[
            f"{lr_ref}: LR is {lr.shape[1]}x{lr.shape[0]} but HR {hr_ref} is "
            f"{hr_full.shape[1]}x{hr_full.shape[0]}; x{scale} needs {w}x{h}"])
    return _Built(name, lr=lr, hr=hr)


def _build_pair(cache: _Cache, spec: _PairSpec, scale: int, min_lr: int) -> _Built:
    """Decodes (or maps) one pair through the cache and checks it."""
    problems, hr_full, lr = [], None, None
    try:
        hr_full = _cached_file(cache, spec.hr)
    except image_io.ImageError as e:
        problems.append(str(e))
    if spec.lr is not None:  # Checked even when HR is bad, so every bad file is named at once.
        try:
            lr = _cached_file(cache, spec.lr)
        except image_io.ImageError as e:
            problems.append(str(e))
    if problems:
        return _Built(spec.name, problems=problems)
    if spec.lr is None:
        hr = modcrop(hr_full, scale)
        if min(hr.shape[:2]) < scale * max(min_lr, 1):
            return _Built(spec.name, too_small=True)
        lr = cache.get(_hash(_CACHE_VERSION, f"bicubic-x{scale}", spec.hr.resolve()),
                       _file_stamp(spec.hr), lambda: imresize(hr, 1 / scale))
    return _check_pair(spec.name, lr, hr_full, scale, min_lr, str(spec.lr), str(spec.hr))


def _build_all(
    cache: _Cache, spec_lists: Sequence[tuple[list[_PairSpec], int]], scale: int, num_threads: int
) -> list[list[_Built]]:
    """Builds every (specs, min_lr) list on a thread pool (decoding releases the GIL)."""
    from tqdm import tqdm  # Deferred: only cache builds show progress.

    jobs = [(k, spec, min_lr) for k, (specs, min_lr) in enumerate(spec_lists) for spec in specs]
    results: list[list[_Built]] = [[] for _ in spec_lists]
    with concurrent.futures.ThreadPoolExecutor(max(num_threads, 1)) as pool:
        built = pool.map(lambda job: _build_pair(cache, job[1], scale, job[2]), jobs)
        for (k, _, _), b in zip(jobs, tqdm(built, total=len(jobs), desc="data cache",
                                          disable=None, leave=False), strict=True):
            results[k].append(b)
    return results


def _tfds_built(
    cache: _Cache, cfg: ml_collections.ConfigDict, split: str, scale: int, min_lr: int
) -> list[_Built]:
    """Pairs of a prepared TFDS split, decoded once into the cache and listed in a manifest."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(
            f"data.source='tfds' needs tensorflow-datasets and tensorflow ({e})") from None
    name = cfg.tfds_name.format(scale=scale)
    data_dir = os.path.expanduser(cfg.tfds_data_dir) or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # TFDS raises many types for unknown names or configs.
        raise DataError(f"data.tfds_name: cannot open TFDS dataset {name!r} "
                        f"({first_line(e)})") from None
    # Prepared TFDS data is immutable per version; a re-prepared copy rewrites its info file.
    info_file = Path(builder.data_dir) / "dataset_info.json"
    stamp = _hash(builder.version, info_file.stat().st_mtime_ns if info_file.exists() else 0)[:12]
    slot = lambda *key: _hash(_CACHE_VERSION, "tfds", name, builder.data_dir, split, *key)
    manifest = cache.root / f"{slot()}-{stamp}.json"
    ref = f"{name}:{split}"

    entries = None  # [(key, lr, hr)]
    if manifest.exists():
        try:
            entries = [(key, _map_npy(cache.root / lr), _map_npy(cache.root / hr))
                       for key, lr, hr in json.loads(manifest.read_text())]
        except (OSError, ValueError):
            entries = None  # Damaged: rebuild.
    if entries is None:
        try:
            ds = tfds.load(name, split=split, data_dir=data_dir, download=False,
                           shuffle_files=False)
        except Exception as e:  # Not prepared, unknown split, ...: TFDS's message says which.
            raise DataError(f"{ref}: cannot load prepared TFDS data ({first_line(e)})"
                            ) from None
        entries, rows = [], []
        for i, example in enumerate(tfds.as_numpy(ds)):
            key, pair, files = f"{i:06d}", [], []
            for feature in ("lr", "hr"):
                rgb = image_io.to_rgb_uint8(example[feature])
                pair.append(cache.get(slot(i, feature), stamp, lambda rgb=rgb: rgb))
                files.append(f"{slot(i, feature)}-{stamp}.npy")
            entries.append((key, *pair))
            rows.append((key, *files))
        tmp = manifest.with_name(f".{manifest.name}.{uuid.uuid4().hex[:12]}.tmp")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, manifest)
    return [_check_pair(key, lr, hr, scale, min_lr, f"{ref}[{key}]", f"{ref}[{key}]")
            for key, lr, hr in entries]


def get_datasets(
    data_cfg: ml_collections.ConfigDict, scale: int, *, patch_size: int | None = None
) -> tuple[PairDataset, PairDataset]:
    """Training and validation pairs of the configured source, decoded through the cache.

    Args:
        data_cfg: a `default_data_config()`-shaped ConfigDict.
        scale: the SR factor (2..8).
        patch_size: the LR training patch size. Training images whose LR would be smaller are
            skipped with one `DataWarning` that counts them. Validation images are kept whole;
            only those smaller than one LR pixel (HR smaller than `scale`) are skipped.

    Returns:
        (train, validation). Validation is empty only for a single-image folder/benchmark
        source without `val_dir`, `val_fraction` 0, or a DIV2K tree without images in
        `val_range` (with a `DataWarning`).

    Raises:
        DataError: a bad config field, or bad data (corrupt/unreadable files, LR/HR size
            mismatches, HR without LR, empty folders), all problems in one message.
    """
    cfg = data_cfg
    if cfg.source not in SOURCES:
        raise DataError(f"data.source: expected one of {', '.join(SOURCES)}, got {cfg.source!r}")
    if int(scale) != scale or not 1 <= scale <= 8:
        raise DataError(f"scale: expected an integer from 1 to 8, got {scale}")
    scale = int(scale)
    min_train = int(patch_size or 1)
    cache = _Cache(Path(os.path.expanduser(cfg.cache_dir)) if cfg.cache_dir
                   else default_cache_dir())
    problems: list[str] = []

    val_specs: list[_PairSpec] | None = None
    if cfg.val_dir:
        val_specs, _ = _dir_specs(cfg, "val_dir", scale, problems)
    if cfg.source == "tfds":
        train_specs = []
    elif cfg.source == "embedded":
        train_specs = _embedded_specs(EMBEDDED_TRAIN, problems)
        if val_specs is None:
            val_specs = _embedded_specs(EMBEDDED_VAL, problems)
    else:
        train_specs, own_val = _dir_specs(cfg, "dir", scale, problems)
        if val_specs is None:
            if own_val is not None:
                val_specs = own_val
            else:
                train_specs, val_specs = _holdout(train_specs, cfg.val_fraction)

    train_built, val_built = _build_all(
        cache, [(train_specs, min_train), (val_specs or [], 1)], scale, cfg.num_threads)
    if cfg.source == "tfds":
        train_built = _tfds_built(cache, cfg, cfg.tfds_train_split, scale, min_train)
        if val_specs is None:
            val_built = _tfds_built(cache, cfg, cfg.tfds_val_split, scale, 1)

    problems += [q for b in (*train_built, *val_built) for q in b.problems]
    if problems:
        raise _data_error(problems)
    small = [b.name for b in (*train_built, *val_built) if b.too_small]
    if small:
        shown = ", ".join(small[:10]) + (", ..." if len(small) > 10 else "")
        side = min_train * scale
        warnings.warn(
            f"Skipped {len(small)} image(s) too small to use: {shown} (training needs HR at "
            f"least {side}x{side}, the patch; validation {scale}x{scale})",
            DataWarning, stacklevel=2)
    datasets = []
    for built, what in ((train_built, "training"), (val_built, "validation")):
        kept = [b for b in built if not b.too_small]
        if not kept and what == "training":
            raise DataError(f"data: no {what} images left (source {cfg.source!r}); "
                            f"{len(small)} were too small for patch_size {patch_size}")
        datasets.append(PairDataset([b.name for b in kept], [b.lr for b in kept],
                                    [b.hr for b in kept], scale))
    return datasets[0], datasets[1]


# ----------------------------------------------------------------------------------------
# Sampling.


def batch_at(
    dataset: PairDataset,
    step: int,
    *,
    seed: int,
    global_batch_size: int,
    patch_size: int,
    scale: int,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
    """This process's slice of the global training batch number `step`.

    A pure function of (dataset, seed, step): the whole global batch is drawn from
    `np.random.default_rng([seed, step])`, so resuming at any step or changing the number of
    processes/devices never changes the data.

    Returns:
        {'lr': uint8 [B_local, p, p, 3], 'hr': uint8 [B_local, s*p, s*p, 3]} with
        B_local = global_batch_size // process_count, rows
        [process_index * B_local, (process_index + 1) * B_local) of the global batch.
    """
    b, p, s = global_batch_size, patch_size, scale
    if s != dataset.scale:
        raise ValueError(f"batch_at: scale {s} but the dataset holds x{dataset.scale} pairs")
    if b % process_count or not 0 <= process_index < process_count:
        raise ValueError(f"batch_at: global batch {b} does not split over process "
                         f"{process_index} of {process_count}")
    if len(dataset) == 0:
        raise ValueError("batch_at: empty dataset")
    if p < 1 or p > dataset.lr_shapes.min():
        raise ValueError(f"batch_at: patch_size {p} exceeds the smallest LR image "
                         f"{tuple(dataset.lr_shapes.min(axis=0))}; pass patch_size to "
                         "get_datasets to skip small images")
    if seed < 0 or step < 0:
        raise ValueError(f"batch_at: seed and step must be >= 0, got {seed}, {step}")

    rng = np.random.default_rng([seed, step])
    image = rng.integers(len(dataset), size=b)
    shapes = dataset.lr_shapes[image]
    top = rng.integers(0, shapes[:, 0] - p + 1)
    left = rng.integers(0, shapes[:, 1] - p + 1)
    hflip, vflip, transpose = (rng.random((3, b)) < 0.5)

    local = b // process_count
    lo = process_index * local
    lr_out = np.empty((local, p, p, 3), np.uint8)
    hr_out = np.empty((local, s * p, s * p, 3), np.uint8)
    for j, g in enumerate(range(lo, lo + local)):
        lr, hr = dataset._lrs[image[g]], dataset._hrs[image[g]]
        y, x = top[g], left[g]
        lr_patch = lr[y:y + p, x:x + p]
        hr_patch = hr[s * y:s * (y + p), s * x:s * (x + p)]
        if hflip[g]:
            lr_patch, hr_patch = lr_patch[:, ::-1], hr_patch[:, ::-1]
        if vflip[g]:
            lr_patch, hr_patch = lr_patch[::-1], hr_patch[::-1]
        if transpose[g]:
            lr_patch, hr_patch = lr_patch.transpose(1, 0, 2), hr_patch.transpose(1, 0, 2)
        if hflip[g] or transpose[g]:
            # Pixels no longer contiguous: numpy would copy with an inner loop over the 3
            # channels; a loop per channel plane is ~5x faster.
            for c in range(3):
                lr_out[j, ..., c] = lr_patch[..., c]
                hr_out[j, ..., c] = hr_patch[..., c]
        else:
            lr_out[j] = lr_patch
            hr_out[j] = hr_patch
    dataset._note_reads(image[lo:lo + local])
    return {"lr": lr_out, "hr": hr_out}


class _PrefetchState:
    """What the worker threads share; kept apart from the iterator so it can be collected."""

    def __init__(self, make_batch: Callable[[int], dict], start_step: int, prefetch: int):
        self.make_batch = make_batch
        self.prefetch = max(prefetch, 1)
        self.next_claim = self.next_yield = start_step
        self.ready: dict[int, dict] = {}
        self.error: BaseException | None = None
        self.closed = False
        self.cond = threading.Condition()

    def work(self) -> None:
        while True:
            with self.cond:
                while (not self.closed and self.error is None
                       and self.next_claim - self.next_yield >= self.prefetch):
                    self.cond.wait()
                if self.closed or self.error is not None:
                    return
                step = self.next_claim
                self.next_claim += 1
            try:
                batch = self.make_batch(step)
            except BaseException as e:  # Re-raised in the consumer, in order.
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                return
            with self.cond:
                if self.closed:
                    return
                self.ready[step] = batch
                self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.ready.clear()
            self.cond.notify_all()


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    for it in list(_LIVE_ITERATORS):
        it.close()


class _BatchIterator(Iterator[dict]):
    """Yields `make_batch(step)` for consecutive steps, computed ahead on daemon threads."""

    def __init__(self, make_batch: Callable[[int], dict], start_step: int, num_threads: int,
                 prefetch: int):
        self._state = _PrefetchState(make_batch, start_step, prefetch)
        self._threads = [
            threading.Thread(target=self._state.work, name=f"maffsrn-data-{i}", daemon=True)
            for i in range(num_threads)
        ]
        for t in self._threads:
            t.start()
        _LIVE_ITERATORS.add(self)

    def __next__(self) -> dict:
        st = self._state
        if not self._threads:  # num_threads=0: compute in the caller's thread.
            if st.closed:
                raise StopIteration
            st.next_yield += 1
            return st.make_batch(st.next_yield - 1)
        with st.cond:
            while st.closed or st.next_yield not in st.ready:
                if st.closed:
                    raise StopIteration
                if st.error is not None:
                    raise st.error
                st.cond.wait()
            batch = st.ready.pop(st.next_yield)
            st.next_yield += 1
            st.cond.notify_all()
        return batch

    def close(self) -> None:
        """Stops the workers (each finishes at most the batch it is computing)."""
        self._state.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)

    def __enter__(self) -> _BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._state.close()


def train_iterator(
    dataset: PairDataset,
    *,
    start_step: int,
    seed: int,
    global_batch_size: int,
    patch_size: int,
    scale: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
) -> _BatchIterator:
    """`batch_at(dataset, step, ...)` for step = start_step, start_step + 1, ... in order.

    Batches are computed on `num_threads` daemon threads (0: in the caller's thread), at most
    `prefetch` ahead of the consumer. Call `close()` (or use it as a context manager) to stop
    the threads early; exiting the interpreter never waits on them.
    """
    # Fail now, in the caller, on arguments batch_at would reject.
    batch_at(dataset, start_step, seed=seed, global_batch_size=global_batch_size,
             patch_size=patch_size, scale=scale, process_index=process_index,
             process_count=process_count)
    make = lambda step: batch_at(
        dataset, step, seed=seed, global_batch_size=global_batch_size, patch_size=patch_size,
        scale=scale, process_index=process_index, process_count=process_count)
    return _BatchIterator(make, start_step, num_threads, prefetch)
