"""The patch sampler: `PairDataset` and `batch_at`, a pure function of (seed, step).

Each step draws a random image, a random aligned crop, and a horizontal flip, vertical flip
and transpose (each p = 0.5, as the official code). The whole global batch is drawn from
`np.random.default_rng([seed, step])` and each process keeps its contiguous slice, so any
process or device count, and any resume point, sees the same data.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Sequence

import numpy as np


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
