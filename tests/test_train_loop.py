"""`train_loop.train_and_evaluate` in-process: outputs, scores, resuming at the end, bad configs;
and, in two JAX processes, recovery shared with a deadline and stop signals agreed on."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from maffsrn_jax import checkpoints
from maffsrn_jax.configs import quickstart
from maffsrn_jax.data import DataError
from maffsrn_jax.train_loop import TrainingError, train_and_evaluate

from .conftest import REPO

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow


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


# --------------------------------------------------------------------------- several processes

_HOSTS_SCRIPT = """
import json, os, signal, sys, time
from pathlib import Path
import jax
pid, addr, root = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
jax.distributed.initialize(addr, num_processes=2, process_id=pid, initialization_timeout=120)
jax.devices()  # the backends start before recovery, as in a run (check_config)
from maffsrn_jax import train_loop
out = []
for name in ("ok", "damaged"):
    try:
        found = train_loop.recover(root / name, timeout_s=300)
        w = None if found.state is None else float(found.state["params"]["w"][0])
        out.append(["step", found.step, w])
    except train_loop.TrainingError as e:
        out.append(["error", str(e)])
with train_loop._StopSignal() as stop:
    if pid == 1:
        stop._note(signal.SIGTERM, None)  # only process 1 was signalled
    out.append([stop.requested(sync=False), stop.requested(sync=True)])
if pid == 0:
    train_loop._recover_here = lambda workdir: time.sleep(600)  # stuck, e.g. on a dead disk
try:
    train_loop.recover(root / "ok", timeout_s=2)
except train_loop.TrainingError as e:
    out.append(["error", str(e)])
print(json.dumps(out), flush=True)
os._exit(0)  # as train.py does after a failure: not into JAX's shutdown barrier
"""


def _two_processes(script: str, tmp_path, timeout: float):
    """Runs `script` as JAX processes 0 and 1 on 127.0.0.1; returns both and process 1's
    (stdout, stderr)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i), addr, str(tmp_path)],
            cwd=REPO, env={**env, "JAX_PLATFORMS": "cpu"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        return procs, procs[1].communicate(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def test_processes_share_recovery_and_stop_together_and_never_wait_for_a_stuck_process_0(
        tmp_path):
    """Two JAX processes on 127.0.0.1: the others read process 0's choice of step (and its
    one-line error); a stop signal reaches every process at a sync step only; a process 0
    stuck in recovery stops the others with one line after the timeout, not a hang."""
    mngr = checkpoints.manager(tmp_path / "ok" / checkpoints.LATEST_DIR)
    checkpoints.save(mngr, 2, {"params": {"w": np.full(3, 2.0)}, "step": np.int32(2)}, {"a": 1})
    mngr.close()
    (tmp_path / "damaged" / checkpoints.LATEST_DIR / "1").mkdir(parents=True)  # no marker
    procs, (out, err) = _two_processes(_HOSTS_SCRIPT, tmp_path, timeout=600)
    assert procs[1].returncode == 0, err[-3000:]
    ok, damaged, stop, stuck = json.loads(out.strip().splitlines()[-1])
    assert ok == ["step", 2, 2.0]
    assert damaged[0] == "error" and "no intact checkpoint" in damaged[1]
    assert stop == [False, True]
    assert stuck[0] == "error" and "\n" not in stuck[1]
    assert stuck[1].startswith("process 1: process 0 did not finish recovering")
    assert "within 2 s" in stuck[1]


_KILLED_SCRIPT = """
import os, signal, sys, time
import jax
pid, addr = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(addr, num_processes=2, process_id=pid, initialization_timeout=120)
jax.devices()
from maffsrn_jax import train_loop
if pid == 0:
    train_loop._recover_here = lambda workdir: os.kill(os.getpid(), signal.SIGKILL)
start = time.monotonic()
try:
    train_loop.recover(sys.argv[3], timeout_s=600)
except train_loop.TrainingError as e:
    print(str(e), flush=True)
print(f"stopped after {time.monotonic() - start:.0f} s", flush=True)
"""


def test_a_process_0_killed_in_recovery_stops_the_others_at_once(tmp_path):
    """Process 0 hosts JAX's coordination service, so its death ends the others through JAX
    (its fatal log, not our one line: the client takes no Python error callback), promptly
    rather than after the 600 s deadline or never."""
    _, (out, err) = _two_processes(_KILLED_SCRIPT, tmp_path, timeout=120)  # or TimeoutExpired
    ours = out.startswith("process 1: process 0 did not finish recovering")
    jaxs = "Terminating process because the JAX distributed service detected fatal" in err
    assert ours or jaxs, (out, err[-3000:])
