"""`train_loop.train_and_evaluate` in-process: outputs, scores, resuming at the end, bad configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maffsrn_jax.configs import quickstart
from maffsrn_jax.data import DataError
from maffsrn_jax.train_loop import TrainingError, train_and_evaluate


def _config(tmp_path):
    images = tmp_path / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            images / f"im{i}.png")
    c = quickstart.get_config()
    c.model.n_ffgs, c.model.n_mabs, c.model.fusion = 1, 1, "hff"
    c.data.source, c.data.dir = "folder", str(images)
    c.data.cache_dir, c.data.num_threads = str(tmp_path / "cache"), 0
    c.batch_size, c.patch_size, c.num_train_steps = 2, 16, 2
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 1
    c.num_summary_images = 1
    return c


def test_runs_scores_and_resumes_at_the_end(tmp_path):
    config = _config(tmp_path)
    workdir = tmp_path / "run"
    first = train_and_evaluate(config, str(workdir))
    assert set(first) == {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}
    assert all(np.isfinite(v) for v in first.values())
    assert 0 < first["ssim"] <= 1 and 0 < first["bicubic_ssim"] <= 1
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    assert [r["step"] for r in records if "val_psnr" in r] == [1, 2]
    assert records[-1]["val_psnr"] == pytest.approx(first["psnr"])
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1", "2"]
    assert (workdir / "best").is_dir() and any((workdir / "tensorboard").iterdir())

    # Nothing left to train: the final weights are scored again, identically, and the log
    # gains no lines.
    again = train_and_evaluate(config, str(workdir))
    assert again == first
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == len(records)


def test_bad_configs_raise_one_line_errors(tmp_path):
    config = _config(tmp_path)
    config.batch_size = 0
    with pytest.raises(TrainingError, match="batch_size"):
        train_and_evaluate(config, str(tmp_path / "a"))
    config = _config(tmp_path / "b")
    config.data.dir = str(tmp_path / "missing")
    with pytest.raises(DataError, match="missing"):
        train_and_evaluate(config, str(tmp_path / "b" / "run"))
