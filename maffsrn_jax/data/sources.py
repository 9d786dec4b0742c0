"""Where (LR, HR) pairs come from: the data sources and `get_datasets`.

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

Every image is decoded once through `cache.py`; `get_datasets` returns `sampler.PairDataset`s.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from maffsrn_jax import image_io
from maffsrn_jax.data.cache import (
    CACHE_VERSION,
    DataError,
    DataWarning,
    _Cache,
    _cached_file,
    _data_error,
    _file_stamp,
    _hash,
    _map_npy,
    default_cache_dir,
)
from maffsrn_jax.data.sampler import PairDataset
from maffsrn_jax.errors import first_line
from maffsrn_jax.extras import require
from maffsrn_jax.files import IMAGE_EXTENSIONS, list_images, write_atomic
from maffsrn_jax.imresize import imresize, modcrop

SOURCES = ("embedded", "div2k", "benchmark", "folder", "tfds")

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

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PairFiles:
    """One (LR, HR) pair on disk: its name, the HR file and the LR file, if there is one."""

    name: str
    hr: Path
    lr: Path | None  # None: LR = imresize(modcrop(HR)), made here.


def _no_images(folder: Path) -> str:
    return f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})"


def _with_lr_files(
    hr_paths: Sequence[Path], lr_dir: Path, scale: int, problems: list[str]
) -> list[PairFiles]:
    """Pairs each HR with `lr_dir/<stem>x<scale>.*`; LR made here if `lr_dir` is absent."""
    if not lr_dir.is_dir():
        _log.info("No %s: making LR images with MATLAB-bicubic imresize", lr_dir)
        return [PairFiles(p.stem, p, None) for p in hr_paths]
    lr_files = {p.stem: p for p in list_images(lr_dir)}
    specs = []
    for hr in hr_paths:
        lr = lr_files.get(f"{hr.stem}x{scale}")
        if lr is None:
            problems.append(f"{hr}: no LR image {lr_dir / f'{hr.stem}x{scale}.png'}")
        else:
            specs.append(PairFiles(hr.stem, hr, lr))
    return specs


def _parse_range(text: str, field: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise DataError(f"data.{field}: expected 'FIRST-LAST' such as '1-800', got {text!r}")
    first = int(m.group(1))
    return range(first, int(m.group(2) or first) + 1)


def _div2k_specs(
    root: Path, numbers: range, scale: int, problems: list[str], *, required: bool = True
) -> list[PairFiles]:
    """DIV2K pairs numbered `numbers`; none found is a problem if `required`, else a warning."""
    specs, known_problems = [], len(problems)
    for split in ("train", "valid"):
        hr_dir = root / f"DIV2K_{split}_HR"
        if not hr_dir.is_dir():
            continue
        hrs = [p for p in list_images(hr_dir) if p.stem.isdigit() and int(p.stem) in numbers]
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


def benchmark_files(root: Path, scale: int, problems: list[str]) -> list[PairFiles]:
    """The EDSR benchmark layout: `HR/<name>.*` with `LR_bicubic/X{s}/<name>x{s}.*`.

    Without an `X{s}` folder, LR is made from HR. Problems (no images, an HR without its LR)
    are appended to `problems`, so that one error can name them all.
    """
    hrs = list_images(root / "HR")
    if not hrs:
        problems.append(_no_images(root / "HR"))
    return _with_lr_files(hrs, root / "LR_bicubic" / f"X{scale}", scale, problems)


def folder_files(root: Path, problems: list[str]) -> list[PairFiles]:
    """Every image in `root` as an HR image whose LR is made from it."""
    hrs = list_images(root)
    if not hrs:
        problems.append(_no_images(root))
    return [PairFiles(p.stem, p, None) for p in hrs]


def _embedded_specs(names: Sequence[str], problems: list[str]) -> list[PairFiles]:
    # The files only: importing scikit-image itself would cost time and memory for nothing.
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source='embedded' needs scikit-image installed")
    root = Path(spec.submodule_search_locations[0]) / "data"
    specs = []
    for name in names:
        path = root / name
        if path.is_file():
            specs.append(PairFiles(path.stem, path, None))
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


def _holdout(specs: list[PairFiles], fraction: float) -> tuple[list, list]:
    n = len(specs)
    k = 0 if n < 2 or fraction <= 0 else min(max(round(n * fraction), 1), n - 1)
    return specs[: n - k], specs[n - k:]


def _dir_specs(
    cfg: ml_collections.ConfigDict, field: str, scale: int, problems: list[str]
) -> tuple[list[PairFiles], list[PairFiles] | None]:
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
        return benchmark_files(root, scale, problems), None
    return folder_files(root, problems), None


@dataclasses.dataclass
class _Built:
    name: str
    lr: np.ndarray | None = None
    hr: np.ndarray | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    too_small: bool = False


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


def _build_pair(cache: _Cache, spec: PairFiles, scale: int, min_lr: int) -> _Built:
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
        lr = cache.get(_hash(CACHE_VERSION, f"bicubic-x{scale}", spec.hr.resolve()),
                       _file_stamp(spec.hr), lambda: imresize(hr, 1 / scale))
    return _check_pair(spec.name, lr, hr_full, scale, min_lr, str(spec.lr), str(spec.hr))


def _build_all(
    cache: _Cache, spec_lists: Sequence[tuple[list[PairFiles], int]], scale: int, num_threads: int
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
    tfds = require("tensorflow_datasets", "tfds", "data.source='tfds'")
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
    slot = lambda *key: _hash(CACHE_VERSION, "tfds", name, builder.data_dir, split, *key)
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
        write_atomic(manifest, json.dumps(rows))
    return [_check_pair(key, lr, hr, scale, min_lr, f"{ref}[{key}]", f"{ref}[{key}]")
            for key, lr, hr in entries]


def get_datasets(
    data_cfg: ml_collections.ConfigDict, scale: int, *, patch_size: int | None = None
) -> tuple[PairDataset, PairDataset]:
    """Training and validation pairs of the configured source, decoded through the cache.

    Args:
        data_cfg: the `data` block of a training config (`maffsrn_jax.configs.default`).
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

    val_specs: list[PairFiles] | None = None
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
