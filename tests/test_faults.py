"""Faults a long run meets: the workdir lock (live and stale), the scan for the newest intact
checkpoint, a torn metrics line, a full disk during a checkpoint or metrics write, batch
upscaling past broken files and Ctrl-C, and a short schedule of `bench faults` (SIGKILLs,
one inside a checkpoint write, a damaged checkpoint, a second run on the same workdir)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.faults import make_images
from maffsrn_jax import checkpoints
from maffsrn_jax.workdir_lock import WorkdirBusy, WorkdirLock

from .conftest import REPO

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------- lock


def test_lock_held_by_a_live_run_turns_the_second_away_untouched(tmp_path):
    with WorkdirLock(tmp_path):
        before = (tmp_path / ".lock").read_bytes()
        with pytest.raises(WorkdirBusy) as e:
            WorkdirLock(tmp_path).acquire()
        assert (tmp_path / ".lock").read_bytes() == before
    message = str(e.value)
    assert str(tmp_path) in message and f"pid {os.getpid()}" in message
    assert socket.gethostname() in message and "\n" not in message
    WorkdirLock(tmp_path).acquire()  # released on exit


def test_lock_left_by_a_killed_process_does_not_block(tmp_path):
    code = (
        "import sys, time; from maffsrn_jax.workdir_lock import WorkdirLock; "
        f"WorkdirLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirBusy, match=f"pid {proc.pid} on"):
            WorkdirLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert f"pid {proc.pid} " in (tmp_path / ".lock").read_text()  # the stale record stays
    with WorkdirLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"pid {os.getpid()} ")


# --------------------------------------------------------------------------- intact-step scan


def _save_steps(root: Path, steps: list[int]) -> None:
    mngr = checkpoints.manager(root, async_save=False)
    for s in steps:
        state = {"params": {"w": np.full(5, float(s))}, "step": np.int32(s)}
        checkpoints.save(mngr, s, state, {"arch": 1})
    mngr.close()


def _damage(step_dir: Path, how: str) -> None:
    if how == "no marker":
        (step_dir / checkpoints.COMMIT_MARKER).unlink()
        return
    target = step_dir / "state" / "manifest.ocdbt"
    if how == "data":
        target = max((step_dir / "state" / "d").iterdir(), key=lambda p: p.stat().st_size)
    if how == "metadata":
        target = step_dir / "model" / "metadata"
    size = target.stat().st_size
    if how == "deleted":
        target.unlink()
    elif how in ("truncated", "metadata"):
        with open(target, "r+b") as f:
            f.truncate(size // 2)
    else:  # garbage
        target.write_bytes(np.random.default_rng(0).bytes(size))


@pytest.mark.parametrize(
    "how", ["no marker", "truncated", "deleted", "garbage", "data", "metadata"]
)
def test_scan_skips_a_damaged_newest_step(tmp_path, how):
    root = tmp_path / "checkpoints"
    _save_steps(root, [1, 2, 3])
    _damage(root / "3", how)
    found = checkpoints.scan(root)
    assert found.step == 2 and list(found.damaged) == [3]
    np.testing.assert_array_equal(found.state["params"]["w"], np.full(5, 2.0))
    assert found.model_config == {"arch": 1}
    # Loading it directly names the folder and what is wrong, in one line.
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.restore(root, 3)
    assert str(root / "3") in str(e.value) and "\n" not in str(e.value)
    assert "tensorstore_spec" not in str(e.value)


def test_recover_moves_damaged_steps_aside_and_warns_once_each(tmp_path, capsys):
    from maffsrn_jax.train_loop import recover

    root = tmp_path / "checkpoints"
    _save_steps(root, [1, 2, 3])
    _damage(root / "3", "garbage")
    (root / "4.orbax-checkpoint-tmp").mkdir()  # a save killed midway
    found = recover(tmp_path)
    assert found.step == 2
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]
    (moved,) = (tmp_path / checkpoints.DAMAGED_DIR).iterdir()
    assert moved.name.startswith("checkpoints-3-") and (moved / "state").is_dir()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: ") for ln in lines)
    assert "4.orbax-checkpoint-tmp" in lines[0]
    assert str(root / "3") in lines[1] and "resumed from step 2" in lines[1]


def test_recover_stops_when_no_step_is_intact_and_leaves_them(tmp_path):
    from maffsrn_jax.train_loop import TrainingError, recover

    root = tmp_path / "checkpoints"
    _save_steps(root, [1, 2])
    _damage(root / "1", "deleted")
    _damage(root / "2", "no marker")
    with pytest.raises(TrainingError) as e:
        recover(tmp_path)
    message = str(e.value)
    assert message.startswith(f"{tmp_path}: no intact checkpoint") and "\n" not in message
    assert "step 1:" in message and "step 2:" in message
    assert sorted(p.name for p in root.iterdir()) == ["1", "2"]
    assert not (tmp_path / checkpoints.DAMAGED_DIR).exists()


def test_load_pretrained_and_eval_name_a_damaged_checkpoint(tmp_path):
    from maffsrn_jax.convert import load_pretrained

    root = tmp_path / "checkpoints"
    _save_steps(root, [1])
    _damage(root / "1", "truncated")
    with pytest.raises(checkpoints.CheckpointError, match=str(root / "1")):
        load_pretrained(tmp_path)
    images = tmp_path / "images"
    make_images(images)
    out = subprocess.run(
        [
            sys.executable,
            "eval.py",
            "--checkpoint",
            str(tmp_path),
            "--scale",
            "2",
            "--data",
            f"set={images}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {root / '1'}")


def test_reads_left_failing_after_a_failed_restore_log_nothing(tmp_path, caplog):
    """The damaged step's other reads fail after the one-line error; their noise is dropped
    while the restore runs, and the hook and asyncio's logger are left as they were."""
    import gc

    root = tmp_path / "checkpoints"
    _save_steps(root, [1])
    _damage(root / "1", "truncated")
    hook, filters = sys.unraisablehook, list(logging.getLogger("asyncio").filters)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        with pytest.raises(checkpoints.CheckpointError):
            checkpoints.restore(root)
        gc.collect()
    assert not caplog.records
    assert sys.unraisablehook is hook and logging.getLogger("asyncio").filters == filters


# --------------------------------------------------------------------------- metrics log


def test_metrics_log_drops_a_torn_line_and_lines_past_the_resumed_step(tmp_path, capsys):
    from maffsrn_jax.train_loop import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"step": 4, "lo')  # killed mid-write
    log = MetricsLog(path, resume_step=2, enabled=True)
    log.write({"step": 3, "loss": 2.0})
    log.close()
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2, 3]
    assert log.has(2, "loss") and not log.has(3, "loss")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {path}: dropped 1 torn line")


# --------------------------------------------------------------------------- training in-process

TINY = dict(steps=6, eval_every=3)


def _config(data_dir: Path, **overrides):
    from maffsrn_jax.configs import quickstart

    c = quickstart.get_config()
    c.model.n_ffgs, c.model.n_mabs, c.model.fusion = 1, 1, "hff"
    c.data.source, c.data.dir = "folder", str(data_dir)
    c.data.cache_dir, c.data.num_threads = str(data_dir.parent / "cache"), 1
    c.batch_size, c.patch_size = 2, 16
    c.num_train_steps = TINY["steps"]
    c.log_every_steps, c.checkpoint_every_steps = 1, 1
    c.eval_every_steps = TINY["eval_every"]
    c.keep_checkpoints = 2
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fault-images") / "images"
    make_images(d)
    return d


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir) -> Path:
    from maffsrn_jax.train_loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("straight")
    train_and_evaluate(_config(data_dir), str(workdir))
    return workdir


def _same_state(a: Path, b: Path) -> None:
    import jax

    sa, _, step_a = checkpoints.restore(a)
    sb, _, step_b = checkpoints.restore(b)
    assert step_a == step_b
    la, lb = jax.tree_util.tree_leaves_with_path(sa), jax.tree_util.tree_leaves_with_path(sb)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def _metrics(workdir: Path) -> list[tuple[int, bool]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], "val_psnr" in r) for r in map(json.loads, lines)]


class _FullDisk:
    """Raises ENOSPC from the `n`-th call on, as a full disk does."""

    def __init__(self, n: int, path: str):
        self.calls, self.n, self.path = 0, n, path

    def check(self) -> None:
        self.calls += 1
        if self.calls >= self.n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(
    tmp_path, data_dir, straight, monkeypatch
):
    from maffsrn_jax import train_loop

    workdir = tmp_path / "run"
    full = _FullDisk(4, str(workdir / "checkpoints"))
    real_save = checkpoints.save

    def save(mngr, step, *a, **k):
        full.check()
        return real_save(mngr, step, *a, **k)

    monkeypatch.setattr(checkpoints, "save", save)
    with pytest.raises(train_loop.TrainingError) as e:
        train_loop.train_and_evaluate(_config(data_dir), str(workdir))
    message = str(e.value)
    assert "\n" not in message and "No space left on device" in message
    assert "kept the checkpoint at step 3" in message and "run the same command" in message
    monkeypatch.setattr(checkpoints, "save", real_save)  # space is back
    train_loop.train_and_evaluate(_config(data_dir), str(workdir))
    _same_state(straight, workdir)
    assert _metrics(workdir) == _metrics(straight)


def test_disk_full_during_a_metrics_write_then_resume(tmp_path, data_dir, straight, monkeypatch):
    from maffsrn_jax import train_loop

    workdir = tmp_path / "run"
    full = _FullDisk(5, str(workdir / "metrics.jsonl"))

    class File:
        def __init__(self, f):
            self.f = f

        def write(self, text: str) -> None:
            full.check()
            self.f.write(text[: len(text) // 2] if full.calls == full.n - 1 else text)

        def flush(self) -> None:
            self.f.flush()

        def close(self) -> None:
            self.f.close()

    monkeypatch.setattr(train_loop, "open", lambda p, m: File(open(p, m)), raising=False)
    with pytest.raises(train_loop.TrainingError) as e:
        train_loop.train_and_evaluate(_config(data_dir), str(workdir))
    message = str(e.value)
    assert message.startswith(f"metrics write to {workdir / 'metrics.jsonl'} failed")
    assert "\n" not in message and "kept the checkpoint at step" in message
    monkeypatch.undo()
    train_loop.train_and_evaluate(_config(data_dir), str(workdir))
    _same_state(straight, workdir)
    assert _metrics(workdir) == _metrics(straight)


def test_a_missed_evaluation_runs_on_resume(tmp_path, data_dir, straight):
    """Killed after the step-3 checkpoint but before its evaluation was logged."""
    import shutil

    from maffsrn_jax.train_loop import train_and_evaluate

    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    for s in checkpoints.step_dirs(workdir / "checkpoints"):
        if s > 3:
            shutil.rmtree(workdir / "checkpoints" / str(s))
    shutil.rmtree(workdir / "best")
    kept = [
        ln
        for ln in (workdir / "metrics.jsonl").read_text().splitlines()
        if json.loads(ln)["step"] < 3 or "loss" in json.loads(ln) and json.loads(ln)["step"] == 3
    ]
    (workdir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    train_and_evaluate(_config(data_dir), str(workdir))
    _same_state(straight, workdir)
    assert _metrics(workdir) == _metrics(straight)
    assert sorted(checkpoints.step_dirs(workdir / "best")) == sorted(
        checkpoints.step_dirs(straight / "best")
    )


# --------------------------------------------------------------------------- upscale


def test_upscale_batch_goes_past_failures_and_ctrl_c_leaves_no_partial_file(
    tmp_path, data_dir, straight, monkeypatch
):
    from maffsrn_jax import upscale

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "c.png"):
        (src / name).write_bytes((data_dir / "img0.png").read_bytes())
    (src / "b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    args = ["--checkpoint", str(straight), "--input", str(src), "--output", str(out)]
    assert upscale.main(args) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]

    real = upscale.upscale_image
    calls = []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    out2 = tmp_path / "out2"
    monkeypatch.setattr(upscale, "upscale_image", interrupted)
    assert upscale.main([*args[:-1], str(out2)]) == 130
    assert sorted(p.name for p in out2.iterdir()) == ["a.png"]  # no partial or temporary file


# --------------------------------------------------------------------------- fault injection


@pytest.mark.slow
def test_bench_faults_short_schedule():
    """Kills (one inside a checkpoint write), a damaged checkpoint and a second run."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "faults", "--kills", "2", "--seed", "3",
         "--steps", "8"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert lines[-1] == "faults survived: 2/2, weights identical: yes"
    assert lines[-2] == "damaged checkpoint: skipped and reported; second run: turned away"
    assert any("inside a checkpoint write" in ln for ln in lines)
    assert any(ln.startswith("damaged checkpoint:") for ln in lines)
    assert any("in use by another run" in ln for ln in lines)


def test_a_failed_background_save_reads_as_the_os_error():
    from maffsrn_jax.train_loop import WriteFailed

    # What TensorStore raises when RLIMIT_FSIZE stops an Orbax write.
    cause = ValueError(
        'OUT_OF_RANGE: Error writing "params.w/0" in OCDBT database at local file "/w/": '
        "Failed to write 62516 bytes to file 4: File too large [os_error_code='27']"
    )
    failed = WriteFailed(Path("/w/checkpoints"), "checkpoint", cause)
    assert failed.reason == "File too large: the disk, quota or file size limit is full"
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/metrics.jsonl")
    assert WriteFailed(Path("/w"), "metrics", enospc).reason.startswith("No space left")
