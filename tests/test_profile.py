"""`python -m maffsrn_jax.profile`: the official sizes, the JSON report, traces, bad flags.
Timing is never asserted here; `python -m maffsrn_jax.speed` measures it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from maffsrn_jax import profile
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO


@pytest.mark.parametrize(
    ("scale", "n_ffgs", "lr_hw", "giga_macs"),
    [
        (4, 4, (256, 256), 27.05),  # AIM 2020 setting
        (2, 4, (360, 640), 86.1),  # 1280x720 HR output
        (3, 4, (240, 426), 39.9),
        (4, 4, (180, 320), 23.8),
        (2, 8, (360, 640), 168.9),  # MAFFSRN-L
        (3, 8, (240, 426), 76.6),
        (4, 8, (180, 320), 44.5),
    ],
)
def test_macs_match_the_official_counts(scale, n_ffgs, lr_hw, giga_macs):
    macs = profile.conv_macs(MAFFSRN(scale=scale, n_ffgs=n_ffgs), (1, *lr_hw, 3))
    assert round(macs / 1e9, 2 if giga_macs == 27.05 else 1) == giga_macs


def test_params_match_the_official_count():
    assert profile.param_count(MAFFSRN(scale=4)) == 441_706
    assert profile.param_count(MAFFSRN(scale=4, n_ffgs=8)) == 830_066


def test_json_report_and_trace(tmp_path):
    out, trace = tmp_path / "report.json", tmp_path / "trace"
    rc = profile.main(["--scale", "2", "--n-ffgs", "1", "--input-size", "16x20", "--repeats", "1",
                       "--warmup", "0", "--json", str(out), "--trace", str(trace)])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("params", "macs", "flops", "bytes_accessed", "peak_memory_bytes", "compile_s",
                "latency_ms", "device"):
        assert key in report, key
    assert isinstance(report["params"], int) and report["params"] == profile.param_count(
        MAFFSRN(scale=2, n_ffgs=1))
    assert report["macs"] == profile.conv_macs(MAFFSRN(scale=2, n_ffgs=1), (1, 16, 20, 3))
    assert report["flops"] > report["macs"] and report["peak_memory_bytes"] > 0
    assert any(p.is_file() for p in trace.rglob("*"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--input-size", "16x"],
        ["--input-size", "16x16", "--dtype", "float8"],
        ["--checkpoint", "/nonexistent/ckpt.pt", "--input-size", "16x16"],
        ["--input-size", "16x16", "--batch-size", "0"],
    ],
)
def test_bad_flags_give_one_line(argv):
    out = subprocess.run([sys.executable, "-m", "maffsrn_jax.profile", *argv], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
