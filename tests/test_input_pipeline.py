"""Data sources, the decode cache, bad input, the patch sampler and the prefetching iterator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench
from maffsrn_jax import data as ip
from maffsrn_jax import image_io
from maffsrn_jax.configs.default import data_config as default_data_config
from maffsrn_jax.imresize import imresize, modcrop

from .conftest import REPO


def _noise(h, w, c=3, dtype=np.uint8, seed=0):
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def _config(tmp_path, **fields):
    cfg = default_data_config()
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.num_threads = 1
    cfg.update(fields)
    return cfg


def _save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    image_io.save_image(path, arr)


def _expected_hr(path, scale):
    return modcrop(image_io.to_rgb_uint8(image_io.load_image(path)), scale)


def _benchmark_tree(root, scale, sizes, seed=0):
    """EDSR benchmark layout with LR files that are NOT imresize(HR), to see which is used."""
    for i, (h, w) in enumerate(sizes):
        _save(root / "HR" / f"im{i}.png", _noise(h * scale, w * scale, seed=seed + i))
        _save(root / "LR_bicubic" / f"X{scale}" / f"im{i}x{scale}.png",
                            _noise(h, w, seed=100 + seed + i))


def test_default_config_fields():
    cfg = default_data_config()
    for field in ("source", "dir", "train_range", "val_range", "val_dir", "val_fraction",
                  "tfds_name", "tfds_data_dir", "tfds_train_split", "tfds_val_split",
                  "cache_dir", "num_threads", "prefetch"):
        assert field in cfg, field
    assert cfg.source in ip.SOURCES


# ----------------------------------------------------------------------------------------
# Sources.


def test_folder_source_handles_odd_images(tmp_path):
    folder = tmp_path / "folder"
    _save(folder / "a_rgb.png", _noise(31, 27))  # Not divisible by 2.
    _save(folder / "b_gray.png", _noise(20, 24, c=1))
    _save(folder / "c_rgba.png", _noise(22, 20, c=4))
    _save(folder / "d_gray16.png", _noise(20, 20, c=1, dtype=np.uint16))
    _save(folder / "e_rgb16.png", _noise(18, 26, dtype=np.uint16))
    (folder / "notes.txt").write_text("ignored: not an image extension")
    train, val = ip.get_datasets(_config(tmp_path, source="folder", dir=str(folder),
                                         val_fraction=0.2), 2)
    assert train.names == ["a_rgb", "b_gray", "c_rgba", "d_gray16"] and val.names == ["e_rgb16"]
    for ds in (train, val):
        for i, name in enumerate(ds.names):
            lr, hr = ds.pair(i)
            want = _expected_hr(folder / f"{name}.png", 2)
            np.testing.assert_array_equal(hr, want)
            np.testing.assert_array_equal(lr, imresize(want, 1 / 2))
    lr, hr = train.pair(0)
    assert hr.shape == (30, 26, 3) and lr.shape == (15, 13, 3)  # Mod-cropped.
    gray = train.pair(1)[1]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    rgba = image_io.load_image(folder / "c_rgba.png")
    np.testing.assert_array_equal(train.pair(2)[1], rgba[..., :3])
    wide = image_io.load_image(folder / "d_gray16.png")
    np.testing.assert_array_equal(train.pair(3)[1][..., 0], image_io.to_rgb_uint8(wide)[..., 0])


def test_benchmark_source_uses_lr_files(tmp_path):
    _benchmark_tree(tmp_path, 2, [(10, 12), (11, 9), (8, 8)])
    assert ip.detect_source(tmp_path) == "benchmark"
    train, val = ip.get_datasets(_config(tmp_path, source="benchmark", dir=str(tmp_path),
                                         val_fraction=0.3), 2)
    assert train.names == ["im0", "im1"] and val.names == ["im2"]
    for i, name in enumerate(train.names):
        lr, hr = train.pair(i)
        np.testing.assert_array_equal(hr, _expected_hr(tmp_path / "HR" / f"{name}.png", 2))
        np.testing.assert_array_equal(
            lr, image_io.load_image(tmp_path / "LR_bicubic" / "X2" / f"{name}x2.png"))


def test_benchmark_without_lr_folder_makes_lr(tmp_path):
    _benchmark_tree(tmp_path, 2, [(10, 12), (11, 9)])
    train, _ = ip.get_datasets(_config(tmp_path, source="benchmark", dir=str(tmp_path)), 3)
    lr, hr = train.pair(0)
    np.testing.assert_array_equal(lr, imresize(hr, 1 / 3))


def _div2k_tree(root, scale=2):
    for split, numbers in (("train", (1, 2, 3)), ("valid", (4, 5))):
        for n in numbers:
            _save(root / f"DIV2K_{split}_HR" / f"{n:04d}.png",
                                _noise(8 * scale, 6 * scale, seed=n))
            _save(root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}" /
                                f"{n:04d}x{scale}.png", _noise(8, 6, seed=50 + n))


def test_div2k_source(tmp_path):
    root = tmp_path / "div2k"
    _div2k_tree(root)
    assert ip.detect_source(root) == "div2k"
    cfg = _config(tmp_path, source="div2k", dir=str(root), train_range="1-3", val_range="4-5")
    train, val = ip.get_datasets(cfg, 2)
    assert train.names == ["0001", "0002", "0003"] and val.names == ["0004", "0005"]
    np.testing.assert_array_equal(
        val.pair(1)[0], image_io.load_image(root / "DIV2K_valid_LR_bicubic/X2/0005x2.png"))
    # Ranges look in both HR folders; numbers without a file are fine.
    cfg.train_range, cfg.val_range = "2-4", "5-900"
    train, val = ip.get_datasets(cfg, 2)
    assert train.names == ["0002", "0003", "0004"] and val.names == ["0005"]
    # Only training images downloaded: validation empty, with a warning...
    cfg.train_range, cfg.val_range = "1-5", "801-900"
    with pytest.warns(ip.DataWarning, match="801-900: no validation images"):
        train, val = ip.get_datasets(cfg, 2)
    assert len(train) == 5 and len(val) == 0
    # ... or taken from val_dir, without one.
    _benchmark_tree(tmp_path / "bm", 2, [(5, 5)])
    cfg.val_dir = str(tmp_path / "bm")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, val = ip.get_datasets(cfg, 2)
    assert len(train) == 5 and val.names == ["im0"]


def test_embedded_source_is_real_photos(tmp_path):
    train, val = ip.get_datasets(_config(tmp_path, num_threads=2), 4, patch_size=48)
    assert len(train) == len(ip.EMBEDDED_TRAIN) and len(val) == len(ip.EMBEDDED_VAL)
    assert not set(train.names) & set(val.names)
    for ds in (train, val):
        for i in range(len(ds)):
            lr, hr = ds.pair(i)
            assert hr.shape == (4 * lr.shape[0], 4 * lr.shape[1], 3) and min(lr.shape[:2]) >= 48
            # Photographs, not noise: neighbouring pixels are strongly correlated.
            y = hr[..., 1].astype(np.float64)
            assert np.corrcoef(y[:, 1:].ravel(), y[:, :-1].ravel())[0, 1] > 0.8
    lr, hr = val.pair(0)
    np.testing.assert_array_equal(lr, imresize(hr, 1 / 4))


def test_val_dir_overrides_split(tmp_path):
    folder = tmp_path / "folder"
    for i in range(3):
        _save(folder / f"{i}.png", _noise(12, 12, seed=i))
    bench_root = tmp_path / "bm"
    _benchmark_tree(bench_root, 2, [(5, 5)])
    train, val = ip.get_datasets(_config(tmp_path, source="folder", dir=str(folder),
                                         val_dir=str(bench_root)), 2)
    assert train.names == ["0", "1", "2"] and val.names == ["im0"]


def test_tfds_source_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    tf = pytest.importorskip("tensorflow")

    def as_dataset(self, split, **kwargs):
        n = 3 if split == "train" else 2
        def examples():
            for i in range(n):
                lr = _noise(7 + i, 9, seed=i)
                yield {"lr": lr, "hr": np.kron(lr, np.ones((2, 2, 1), np.uint8))}
        spec = tf.TensorSpec((None, None, 3), tf.uint8)
        return tf.data.Dataset.from_generator(examples, output_signature={"lr": spec, "hr": spec})

    cfg = _config(tmp_path, source="tfds")
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        train, val = ip.get_datasets(cfg, 2)
    assert len(train) == 3 and len(val) == 2
    lr, hr = train.pair(2)
    np.testing.assert_array_equal(lr, _noise(9, 9, seed=2))
    np.testing.assert_array_equal(hr[::2, ::2], lr)
    # Second time: served from the cache's manifest, TFDS not read at all.
    def unreadable(self, split, **kwargs):
        raise AssertionError("TFDS read although cached")
    with tfds.testing.mock_data(as_dataset_fn=unreadable):
        train2, _ = ip.get_datasets(cfg, 2)
    np.testing.assert_array_equal(train2.pair(2)[1], hr)
    # TFDS's default mock examples have unrelated LR/HR sizes: one error names them all.
    with tfds.testing.mock_data(num_examples=2), pytest.raises(ip.DataError) as err:
        ip.get_datasets(_config(tmp_path / "other", source="tfds"), 2)
    assert all(f"div2k/bicubic_x2:{s}[00000{i}]" in str(err.value)
               for s in ("train", "validation") for i in (0, 1)), err.value
    # Not prepared, or not a dataset at all: one line each.
    cfg = _config(tmp_path, source="tfds", tfds_data_dir=str(tmp_path / "no_tfds"))
    with pytest.raises(ip.DataError, match="cannot load prepared TFDS data") as err:
        ip.get_datasets(cfg, 2)
    cfg.tfds_name = "no_such_dataset_anywhere"
    with pytest.raises(ip.DataError, match="data.tfds_name") as err2:
        ip.get_datasets(cfg, 2)
    assert "\n" not in str(err.value) + str(err2.value)


# ----------------------------------------------------------------------------------------
# The cache.


def _count_decodes(monkeypatch):
    calls = []
    real = image_io.load_image
    monkeypatch.setattr(image_io, "load_image", lambda path: calls.append(path) or real(path))
    return calls


def test_cache_build_reuse_and_invalidation(tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    for i in range(3):
        _save(folder / f"{i}.png", _noise(12, 10, seed=i))
    cfg = _config(tmp_path, source="folder", dir=str(folder), val_fraction=0)
    cache = Path(cfg.cache_dir)
    decodes = _count_decodes(monkeypatch)

    ip.get_datasets(cfg, 2)
    assert len(decodes) == 3 and len(list(cache.glob("*.npy"))) == 6  # HR + made LR each.
    decodes.clear()
    ip.get_datasets(cfg, 2)
    assert decodes == []

    changed = _noise(12, 10, seed=99)
    _save(folder / "1.png", changed)
    st = (folder / "1.png").stat()
    os.utime(folder / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    train, _ = ip.get_datasets(cfg, 2)
    assert decodes == [folder / "1.png"]
    np.testing.assert_array_equal(train.pair(1)[1], changed)
    np.testing.assert_array_equal(train.pair(1)[0], imresize(changed, 1 / 2))
    assert len(list(cache.glob("*.npy"))) == 6  # Stale entries were removed.


def test_cache_crash_mid_build_leaves_no_entry(tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    _save(folder / "a.png", _noise(12, 10))
    cfg = _config(tmp_path, source="folder", dir=str(folder), val_fraction=0)

    def crash(f, arr, **kwargs):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # Killed mid-write.

    with monkeypatch.context() as m:
        m.setattr(np.lib.format, "write_array", crash)
        with pytest.raises(KeyboardInterrupt):
            ip.get_datasets(cfg, 2)
    assert os.listdir(cfg.cache_dir) == []

    def disk_full(f, arr, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(np.lib.format, "write_array", disk_full)
        with pytest.raises(ip.DataError, match="data.cache_dir: cannot write .*No space left"):
            ip.get_datasets(cfg, 2)
    assert os.listdir(cfg.cache_dir) == []
    train, _ = ip.get_datasets(cfg, 2)
    np.testing.assert_array_equal(train.pair(0)[1], _noise(12, 10))


def test_cache_damaged_entries_and_old_temp_files(tmp_path, caplog):
    folder = tmp_path / "folder"
    _save(folder / "a.png", _noise(12, 10))
    cfg = _config(tmp_path, source="folder", dir=str(folder), val_fraction=0)
    ip.get_datasets(cfg, 2)
    cache = Path(cfg.cache_dir)
    for entry in cache.glob("*.npy"):
        entry.write_bytes(entry.read_bytes()[:-5])  # Damaged behind our back.
    old_tmp = cache / ".x.123.tmp"
    old_tmp.write_bytes(b"junk")
    os.utime(old_tmp, (time.time() - 7200,) * 2)
    train, _ = ip.get_datasets(cfg, 2)
    np.testing.assert_array_equal(train.pair(0)[1], _noise(12, 10))
    assert "Rebuilding unreadable cache entry" in caplog.text
    assert not old_tmp.exists()


# ----------------------------------------------------------------------------------------
# Bad input.


def test_every_bad_file_in_one_error(tmp_path):
    root = tmp_path
    _benchmark_tree(root, 2, [(6, 6), (6, 6), (6, 6), (6, 6), (6, 6)])
    hr, lr = root / "HR", root / "LR_bicubic" / "X2"
    (hr / "im1.png").write_text("not a png")                                  # Corrupt HR.
    data = (lr / "im2x2.png").read_bytes()
    (lr / "im2x2.png").write_bytes(data[: len(data) // 2])                     # Truncated LR.
    (lr / "im3x2.png").unlink()                                                # HR without LR.
    _save(lr / "im4x2.png", _noise(5, 6))                        # Size mismatch.
    with pytest.raises(ip.DataError) as err:
        ip.get_datasets(_config(tmp_path, source="benchmark", dir=str(root)), 2)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("4 problems")
    for bad in (hr / "im1.png", lr / "im2x2.png", hr / "im3.png", lr / "im4x2.png"):
        assert str(bad) in msg, (bad, msg)
    assert "im0" not in msg
    assert "6x5" in msg and "needs 6x6" in msg  # The mismatch says what was expected.


@pytest.mark.parametrize("fields,match", [
    (dict(source="folder"), "data.dir: no folder"),
    (dict(source="folder", dir="/nonexistent/x"), "not a directory"),
    (dict(source="imagenet"), "data.source"),
    (dict(source="div2k", train_range="800-1"), "data.train_range"),
    (dict(source="folder", val_dir="/nonexistent/v"), "data.val_dir"),
])
def test_bad_config(tmp_path, fields, match):
    if fields.get("source") == "div2k":
        _div2k_tree(tmp_path / "d")
        fields = dict(fields, dir=str(tmp_path / "d"))
    with pytest.raises(ip.DataError, match=match):
        ip.get_datasets(_config(tmp_path, **fields), 2)


def test_empty_folders(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "HR").mkdir()
    with pytest.raises(ip.DataError, match="no images found") as err:
        ip.get_datasets(_config(tmp_path, source="folder", dir=str(tmp_path / "folder")), 2)
    assert str(tmp_path / "folder") in str(err.value)
    with pytest.raises(ip.DataError, match="no images found"):
        ip.get_datasets(_config(tmp_path, source="benchmark", dir=str(tmp_path)), 2)
    (tmp_path / "d" / "DIV2K_train_HR").mkdir(parents=True)
    with pytest.warns(ip.DataWarning), pytest.raises(ip.DataError, match="numbered 1-800"):
        ip.get_datasets(_config(tmp_path, source="div2k", dir=str(tmp_path / "d")), 2)


def test_small_images_skipped_with_one_warning(tmp_path):
    folder = tmp_path / "folder"
    for name, size in (("big1", 40), ("small1", 10), ("big2", 33), ("small2", 15), ("tiny", 1)):
        _save(folder / f"{name}.png", _noise(size, size))
    cfg = _config(tmp_path, source="folder", dir=str(folder), val_fraction=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, _ = ip.get_datasets(cfg, 2, patch_size=8)  # 16x16 HR patches.
    assert train.names == ["big1", "big2"]
    assert len(caught) == 1 and caught[0].category is ip.DataWarning
    msg = str(caught[0].message)
    assert msg.startswith("Skipped 3 image(s)") and "small1, small2, tiny" in msg, msg
    with pytest.warns(ip.DataWarning), pytest.raises(ip.DataError, match="no training images"):
        ip.get_datasets(cfg, 2, patch_size=30)


# ----------------------------------------------------------------------------------------
# Sampling.


def _blocky_dataset(scale=2, sizes=((20, 30), (25, 25), (16, 40))):
    """LR noise; HR its nearest-neighbour enlargement, so hr[::s, ::s] == lr exactly."""
    lrs = [_noise(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    hrs = [np.kron(lr, np.ones((scale, scale, 1), np.uint8)) for lr in lrs]
    return ip.PairDataset([f"im{i}" for i in range(len(lrs))], lrs, hrs, scale)


def _batch(ds, step, **kw):
    args = dict(seed=7, global_batch_size=8, patch_size=12, scale=ds.scale)
    return ip.batch_at(ds, step, **{**args, **kw})


def test_batch_shapes_alignment_and_determinism():
    ds = _blocky_dataset(scale=3)
    b = _batch(ds, 5)
    assert b["lr"].shape == (8, 12, 12, 3) and b["hr"].shape == (8, 36, 36, 3)
    assert b["lr"].dtype == b["hr"].dtype == np.uint8
    np.testing.assert_array_equal(b["hr"][:, ::3, ::3], b["lr"])  # Aligned after augmentation.
    again = _batch(ds, 5)
    assert all(np.array_equal(b[k], again[k]) for k in b)
    assert not np.array_equal(b["lr"], _batch(ds, 6)["lr"])
    assert not np.array_equal(b["lr"], _batch(ds, 5, seed=8)["lr"])


@pytest.mark.parametrize("count", [2, 4, 8])
def test_global_batch_independent_of_process_count(count):
    ds = _blocky_dataset()
    whole = _batch(ds, 3)
    parts = [_batch(ds, 3, process_index=i, process_count=count) for i in range(count)]
    for k in ("lr", "hr"):
        assert parts[0][k].shape[0] == 8 // count
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k])


def test_all_eight_flips_and_transposes_occur():
    lr = _noise(6, 6, seed=3)
    ds = ip.PairDataset(["one"], [lr], [np.kron(lr, np.ones((2, 2, 1), np.uint8))], 2)
    variants = []
    for t in range(2):
        x = lr.transpose(1, 0, 2) if t else lr
        variants += [x, x[::-1], x[:, ::-1], x[::-1, ::-1]]
    counts = np.zeros(8, int)
    for step in range(40):
        for patch in ip.batch_at(ds, step, seed=0, global_batch_size=10, patch_size=6,
                                 scale=2)["lr"]:
            matches = [k for k, v in enumerate(variants) if np.array_equal(patch, v)]
            assert len(matches) == 1
            counts[matches[0]] += 1
    assert counts.min() > 20, counts  # 400 draws, ~50 each.


def test_batch_bad_arguments():
    ds = _blocky_dataset()
    with pytest.raises(ValueError, match="smallest LR image"):
        _batch(ds, 0, patch_size=17)
    with pytest.raises(ValueError, match="does not split"):
        _batch(ds, 0, process_count=3)
    with pytest.raises(ValueError, match="x2 pairs"):
        _batch(ds, 0, scale=3)
    with pytest.raises(ValueError):
        ip.PairDataset(["a"], [_noise(4, 4)], [_noise(8, 9)], 2)


def test_page_release_keeps_batches_identical(tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    for i in range(3):
        _save(folder / f"{i}.png", _noise(64, 80, seed=i))
    cfg = _config(tmp_path, source="folder", dir=str(folder), val_fraction=0)
    plain, _ = ip.get_datasets(cfg, 2)
    monkeypatch.setattr(ip.PairDataset, "resident_budget_bytes", 1000)
    trimmed, _ = ip.get_datasets(cfg, 2)
    assert trimmed._trim and not plain._trim
    for step in range(5):
        a, b = (ip.batch_at(d, step, seed=1, global_batch_size=4, patch_size=8, scale=2)
                for d in (plain, trimmed))
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert trimmed._touched == set()  # Released after every batch at this budget.
    for i in range(len(trimmed)):  # Whole-image reads (validation) count too.
        np.testing.assert_array_equal(trimmed.pair(i)[1], plain.pair(i)[1])
        assert trimmed._touched == set()


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise KeyError("RssFile")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_resident_memory_stays_bounded(tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    _save(folder / "big.png", _noise(1200, 1600))  # ~5.8 MB HR, 1.4 MB LR.
    cfg = _config(tmp_path, source="folder", dir=str(folder), val_fraction=0)
    monkeypatch.setattr(ip.PairDataset, "resident_budget_bytes", 1 << 20)
    ds, _ = ip.get_datasets(cfg, 2)
    ds._note_reads(np.array([0]))  # Start from nothing mapped (the image exceeds the budget).
    before = _rss_file_kib()
    for step in range(200):
        ip.batch_at(ds, step, seed=0, global_batch_size=16, patch_size=48, scale=2)
    # 200 batches touch every page of the 7 MB; resident growth stays near the 1 MiB budget.
    assert _rss_file_kib() - before < 3 * 1024


# ----------------------------------------------------------------------------------------
# The prefetching iterator.


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_train_iterator_yields_batch_at_in_order(threads):
    ds = _blocky_dataset()
    kw = dict(seed=3, global_batch_size=4, patch_size=10, scale=2, process_index=1,
              process_count=2)
    it = ip.train_iterator(ds, start_step=17, num_threads=threads, prefetch=2, **kw)
    with it:
        for step in range(17, 27):
            got, want = next(it), ip.batch_at(ds, step, **kw)
            assert all(np.array_equal(got[k], want[k]) for k in want)
    assert not any(t.is_alive() for t in it._threads)
    with pytest.raises(StopIteration):
        next(it)


class _FailingDataset(ip.PairDataset):
    calls = 0

    def _note_reads(self, indices):  # Called once per batch.
        type(self).calls += 1
        if self.calls > 5:
            raise RuntimeError("disk on fire")


def test_train_iterator_raises_worker_errors():
    base = _blocky_dataset()
    ds = _FailingDataset(base.names, [base.pair(i)[0] for i in range(3)],
                         [base.pair(i)[1] for i in range(3)], 2)
    it = ip.train_iterator(ds, start_step=0, seed=0, global_batch_size=4, patch_size=8,
                           scale=2, num_threads=2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        for _ in range(20):
            next(it)
    it.close()


def test_interpreter_exit_does_not_wait_for_workers():
    code = (
        "import numpy as np\n"
        "from maffsrn_jax import data as ip\n"
        "lr = np.zeros((20, 20, 3), np.uint8)\n"
        "ds = ip.PairDataset(['a'], [lr], [np.zeros((40, 40, 3), np.uint8)], 2)\n"
        "it = ip.train_iterator(ds, start_step=0, seed=0, global_batch_size=2, patch_size=8,"
        " scale=2, num_threads=2, prefetch=2)\n"
        "next(it)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------------------
# The benchmark command.


def test_bench_input_command(tmp_path, capsys):
    folder = tmp_path / "folder"
    for i in range(2):
        _save(folder / f"{i}.png", _noise(64, 64, seed=i))
    rc = bench.main(["input", "--data-dir", str(folder), "--scale", "2", "--batch-size", "4",
                     "--patch-size", "16", "--seconds", "0.2", "--cache-dir",
                     str(tmp_path / "cache")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and re.fullmatch(r"patches/s: \d+", out[-1]), out
    assert float(out[-1].split()[1]) > 0

    rc = bench.main(["input", "--data-dir", str(tmp_path / "nope"), "--seconds", "0.1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "nope" in err
