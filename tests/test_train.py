"""train.py end to end on a tiny model and a tiny generated image folder (subprocesses):
resume bit-exactness after SIGTERM, multi-host vs single host, init_from PyTorch, NaN stop,
bad configs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.faults import make_images

from .conftest import REPO

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow

TINY = [
    "--config.model.n_ffgs=1",
    "--config.model.n_mabs=2",
    "--config.batch_size=4",
    "--config.patch_size=16",
    "--config.num_train_steps=6",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=3",
    "--config.checkpoint_every_steps=3",
    "--config.data.num_threads=1",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Six smooth 64x64 photographs-to-be (the last one is held out for validation)."""
    d = tmp_path_factory.mktemp("images")
    make_images(d, count=6, size=64)
    return d


def _args(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "--config",
        "configs/quickstart.py",
        "--workdir",
        str(workdir),
        "--config.data.source=folder",
        f"--config.data.dir={data_dir}",
        f"--config.data.cache_dir={data_dir.parent / 'cache'}",
        *TINY,
        *extra,
    ]


def _env(devices: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    return env


def _run(args: list[str], devices: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=REPO, env=_env(devices), capture_output=True, text=True, timeout=timeout
    )


def _params(workdir: Path) -> dict[str, np.ndarray]:
    from flax import traverse_util

    from maffsrn_jax import load_pretrained

    _, variables = load_pretrained(workdir)
    return {
        "/".join(k): np.asarray(v)
        for k, v in traverse_util.flatten_dict(variables["params"]).items()
    }


def _steps(workdir: Path, key: str = "loss") -> list[int]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if key in r]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir) -> Path:
    """A 6-step run that was never interrupted."""
    workdir = tmp_path_factory.mktemp("straight")
    out = _run(_args(workdir, data_dir))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "over bicubic" in out.stdout
    return workdir


def test_a_run_writes_checkpoints_summaries_and_metrics(straight):
    assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir()) == [3, 6]
    assert [int(p.name) for p in (straight / "best").iterdir()] in ([3], [6])
    assert any((straight / "tensorboard").iterdir())
    assert _steps(straight) == list(range(1, 7))
    assert _steps(straight, "val_psnr") == [3, 6]


def test_sigterm_then_resume_is_bit_identical(tmp_path, data_dir, straight):

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        _args(resumed, data_dir),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        log = resumed / "metrics.jsonl"
        if log.exists() and any(s >= 2 for s in _steps(resumed)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "SIGTERM" in err and "resume" in err and "Traceback" not in err
    stopped = max(int(p.name) for p in (resumed / "checkpoints").iterdir())
    assert 2 <= stopped < 6

    out = _run(_args(resumed, data_dir))  # the same command again
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _steps(resumed) == list(range(1, 7))  # no step logged twice

    # A finished run given the same command again only re-scores the final weights.
    again = _run(_args(resumed, data_dir))
    assert again.returncode == 0 and "step 6" in again.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_four_devices(tmp_path, data_dir):
    steps = [
        "--config.num_train_steps=3",
        "--config.eval_every_steps=3",
        "--config.checkpoint_every_steps=3",
        # One MAB (hierarchical fusion): this test is about hosts and devices, and each of
        # its three train.py processes compiles a step of its own.
        "--config.model.n_mabs=1",
        "--config.model.fusion=hff",
    ]
    single = tmp_path / "single"
    out = _run(_args(single, data_dir, *steps), devices=4)
    assert out.returncode == 0, out.stderr[-3000:]

    multi = tmp_path / "multi"
    addr = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            _args(
                multi,
                data_dir,
                *steps,
                f"--coordinator_address={addr}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            cwd=REPO,
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "over bicubic" in outs[0][0] and "over bicubic" not in outs[1][0]  # one reporter
    a, b = _params(single), _params(multi)
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= 2e-5


def test_init_from_a_pytorch_checkpoint_of_another_scale(tmp_path, data_dir):
    torch = pytest.importorskip("torch")
    from maffsrn_jax import torch_model

    torch.manual_seed(0)
    ref = torch_model.MAFFSRN(4, n_ffgs=1, n_mabs=2)
    ckpt = tmp_path / "x4.pt"
    torch.save(ref.state_dict(), ckpt)
    out = _run(
        _args(
            tmp_path / "w",
            data_dir,
            f"--config.init_from={ckpt}",
            "--config.num_train_steps=1",
            "--config.eval_every_steps=1",
            "--config.checkpoint_every_steps=1",
        )
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "re-initialised" in out.stderr
    # One step of AdamP at lr 1e-3 moves a weight by at most ~1e-3: the body came from x4.
    got = _params(tmp_path / "w")
    want = ref.state_dict()["body.0.b0.conv00.0.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_allclose(got["body_0/b0/conv00/kernel"], want, atol=2e-3)


def test_a_run_of_non_finite_steps_stops_training(tmp_path, data_dir):
    out = _run(
        _args(
            tmp_path / "w",
            data_dir,
            "--config.learning_rate=1e30",
            "--config.max_bad_steps=2",
            "--config.num_train_steps=20",
            # One MAB: the stop is the training loop's, and this run compiles a step of its own.
            "--config.model.n_mabs=1",
            "--config.model.fusion=hff",
        )
    )
    assert out.returncode == 1, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "non-finite" in last


@pytest.mark.parametrize(
    ("extra", "devices", "expect"),
    [
        (["--config.no_such_field=1"], 1, "no_such_field"),
        (["--config.batch_size=4"], 3, "not divisible"),
        (["--config.data.dir=/nonexistent/images"], 1, "/nonexistent/images"),
        (["--config.init_from=/nonexistent/x2.pt"], 1, "/nonexistent/x2.pt"),
        (["--config.model.fusion=xyz"], 1, "fusion"),
        (["--num_processes=2"], 1, "--coordinator_address"),
    ],
)
def test_bad_configs_fail_with_one_line(tmp_path, data_dir, extra, devices, expect):
    out = _run(_args(tmp_path / "w", data_dir, *extra), devices=devices, timeout=300)
    assert out.returncode != 0
    assert expect in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "w" / "checkpoints").exists() or not any(
        (tmp_path / "w" / "checkpoints").iterdir()
    )


def test_workdir_of_another_architecture_is_refused(straight, data_dir):
    out = _run(_args(straight, data_dir, "--config.model.n_feats=16"))
    assert out.returncode == 2
    assert "another architecture" in out.stderr and "Traceback" not in out.stderr
    assert sorted(int(p.name) for p in (straight / "checkpoints").iterdir()) == [3, 6]


def test_a_save_killed_midway_leaves_the_previous_checkpoint_usable(tmp_path, straight):
    import shutil

    from maffsrn_jax import checkpoints

    work = tmp_path / "w"
    shutil.copytree(straight / "checkpoints", work / "checkpoints")
    # What a kill -9 during Orbax's save of step 9 leaves behind: an unfinished temp folder.
    partial = work / "checkpoints" / "9.orbax-checkpoint-tmp-1795530000"
    shutil.copytree(work / "checkpoints" / "6", partial)
    for f in sorted(partial.rglob("*"))[::2]:
        if f.is_file():
            f.write_bytes(b"")
    _, _, step = checkpoints.restore(work)
    assert step == 6
    a, b = _params(straight), _params(work)
    assert all(np.array_equal(a[k], b[k]) for k in a)
