"""maffsrn_jax.profile and maffsrn_jax.counts: sizes against the official numbers, the CLI's report.

Counts use abstract evaluation only; the CLI runs compile a 1-FFG, 2-MAB model on 13x13.
Timing is never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from maffsrn_jax import counts, cpu_conv, profile
from maffsrn_jax.models import MAFFSRN

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# Facts sheet, section 3 (measured on the official code).
OFFICIAL_PARAMS = {
    (4, 2): 402_394, (4, 3): 418_774, (4, 4): 441_706,
    (8, 2): 790_754, (8, 3): 807_134, (8, 4): 830_066,
}
# Conv multiply-adds in G for a 1280x720 HR output (LR = HR // scale per side).
OFFICIAL_MACS_720P = {
    (4, 2): 86.1, (4, 3): 39.9, (4, 4): 23.8,
    (8, 2): 168.9, (8, 3): 76.6, (8, 4): 44.5,
}


@pytest.mark.parametrize("n_ffgs, scale", sorted(OFFICIAL_PARAMS))
def test_param_count_matches_official(n_ffgs, scale):
    assert counts.param_count(MAFFSRN(scale, n_ffgs=n_ffgs)) == OFFICIAL_PARAMS[n_ffgs, scale]


def test_macs_x4_256_matches_aim2020():
    macs = counts.conv_macs(MAFFSRN(4), (1, 256, 256, 3))
    assert round(macs / 1e9, 2) == 27.05


@pytest.mark.parametrize("n_ffgs, scale", sorted(OFFICIAL_MACS_720P))
def test_macs_720p_match_official(n_ffgs, scale):
    shape = (1, 720 // scale, 1280 // scale, 3)
    macs = counts.conv_macs(MAFFSRN(scale, n_ffgs=n_ffgs), shape)
    assert round(macs / 1e9, 1) == OFFICIAL_MACS_720P[n_ffgs, scale]


def _hand_counted_macs(scale: int, h: int, w: int, n_ffgs: int, n_mabs: int) -> int:
    """The facts sheet's layer list, multiplied out by hand (n_feats 32, ESA width 8)."""
    c, r = 32, 8
    px = h * w
    hs, ws = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # stride-2 3x3, padding 1
    hp, wp = (hs - 7) // 3 + 1, (ws - 7) // 3 + 1  # 7x7 / 3 max pool, no padding
    mab = (
        px * 2 * 9 * c * c  # conv01, conv00
        + px * c * r  # reduce_channels
        + hs * ws * 9 * r * r  # reduce_spatial_size
        + hp * wp * 2 * 9 * r * r  # conv1, conv2 (dilated)
        + px * r * c  # increase_channels
        + px * c * c  # bottom11
        + px * 25 * c  # bottom11_dw (depthwise)
    )
    ffg = n_mabs * mab + (n_mabs - 1) * px * 2 * c * c  # M-BFF reductions, 64 -> 32
    out = 3 * scale * scale
    return px * 9 * 3 * c + n_ffgs * ffg + px * (9 + 25) * c * out


@pytest.mark.parametrize("scale, h, w", [(2, 13, 13), (3, 20, 17), (4, 29, 40)])
def test_macs_equal_a_hand_count_of_the_layers(scale, h, w):
    model = MAFFSRN(scale, n_ffgs=2, n_mabs=3)
    assert counts.conv_macs(model, (1, h, w, 3)) == _hand_counted_macs(scale, h, w, 2, 3)
    # A batch multiplies the count.
    assert counts.conv_macs(model, (3, h, w, 3)) == 3 * _hand_counted_macs(scale, h, w, 2, 3)


def test_macs_follow_the_ablations():
    shape = (1, 16, 16, 3)
    full = counts.conv_macs(MAFFSRN(2, n_ffgs=1), shape)
    no_cea = counts.conv_macs(MAFFSRN(2, n_ffgs=1, use_cea=False), shape)
    assert full - no_cea == 4 * 16 * 16 * (32 * 32 + 25 * 32)
    # HFF replaces three 64 -> 32 reductions by one 128 -> 32: 2 x 64 x 32 fewer per pixel.
    hff = counts.conv_macs(MAFFSRN(2, n_ffgs=1, fusion="hff"), shape)
    assert full - hff == 16 * 16 * (3 * 64 - 128) * 32


# --- the command line -----------------------------------------------------------------------


TINY_CONFIG = """
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        dict(scale=2, n_ffgs=1, n_mabs=2, n_feats=32, fusion="mbff", use_cea=True,
             channel_shuffle=True, esa_convs="3x3+dil3x3", dtype="float32")
    )
    return c
"""

KEYS = {
    "params": int,
    "macs": int,
    "flops": float,
    "bytes_accessed": float,
    "peak_memory_bytes": int,
    "compile_s": float,
    "device": str,
    "page_faults_per_run": int,
    "malloc_keeps_freed_memory": bool,
}
# In-process CLI runs leave the test process's malloc as it is; a subprocess checks the default.
MALLOC = "--malloc-defaults"


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "tiny.py"
    path.write_text(TINY_CONFIG)
    return path


def _check_report(report: dict, timing_key: str) -> None:
    for key, kind in KEYS.items():
        assert isinstance(report[key], kind), (key, report[key])
    assert isinstance(report[timing_key], float) and report[timing_key] > 0
    assert report["flops"] > 0 and report["bytes_accessed"] > 0 and report["peak_memory_bytes"] > 0


def test_cli_inference_json_trace_and_hlo(tiny_config, tmp_path, capsys):
    out = tmp_path / "report.json"
    trace, hlo = tmp_path / "trace", tmp_path / "hlo"
    code = profile.main([
        "--config", str(tiny_config), "--input-size", "13x15", "--batch-size", "2",
        "--repeats", "1", "--warmup", "0", "--json", str(out),
        "--trace", str(trace), "--dump-hlo", str(hlo), MALLOC,
    ])
    assert code == 0
    report = json.loads(out.read_text())
    _check_report(report, "latency_ms")
    assert "train_step_ms" not in report
    assert report["input_shape"] == [2, 13, 15, 3]
    model = MAFFSRN(2, n_ffgs=1, n_mabs=2)
    assert report["params"] == counts.param_count(model)
    assert report["macs"] == counts.conv_macs(model, (2, 13, 15, 3))
    assert "macs" in capsys.readouterr().out
    # A TensorBoard / Perfetto-readable trace and the two program texts.
    assert list(trace.rglob("*.xplane.pb")), sorted(trace.rglob("*"))
    assert list(trace.rglob("*.trace.json.gz"))
    assert "stablehlo" in (hlo / "forward.stablehlo.mlir").read_text()
    assert "ENTRY" in (hlo / "forward.optimized.hlo.txt").read_text()


@pytest.mark.slow
def test_cli_train_step_report(tiny_config, tmp_path):
    out = tmp_path / "train.json"
    code = profile.main([
        "--config", str(tiny_config), "--train", "--input-size", "13x13", "--batch-size", "2",
        "--repeats", "1", "--warmup", "0", "--json", str(out), MALLOC,
    ])
    assert code == 0
    report = json.loads(out.read_text())
    _check_report(report, "train_step_ms")
    assert report["malloc_keeps_freed_memory"] is False
    assert "latency_ms" not in report
    assert report["mode"] == "train"
    # The train step holds parameters, two Adam moments and the activations for backprop.
    assert report["peak_memory_bytes"] > 3 * 4 * report["params"]


def test_xla_cost_counts_the_work_of_the_cpu_kernels(monkeypatch):
    if not cpu_conv.available():  # asked at run time: the first ask builds the kernels
        pytest.skip("the AVX-512 kernels do not run here")
    # XLA's cost analysis sees the kernels' custom calls as free; the report takes it from the
    # same program with XLA's convolutions, so it must equal a run without the kernels.
    model = MAFFSRN(2, n_ffgs=1, n_mabs=2)
    shape = (2, 13, 14, 3)
    with_kernels = profile.profile_model(model, None, shape, repeats=0)
    monkeypatch.setattr(cpu_conv, "supports", lambda *_: False)
    monkeypatch.setattr(cpu_conv, "supports_pointwise", lambda *_: False)
    without = profile.profile_model(model, None, shape, repeats=0)
    assert with_kernels["flops"] == without["flops"]
    assert with_kernels["bytes_accessed"] == without["bytes_accessed"]


def test_cli_reports_the_xla_options_it_compiled_with(tiny_config, tmp_path):
    from maffsrn_jax import xla_options

    base = ["--config", str(tiny_config), "--input-size", "13x13", "--repeats", "0", MALLOC]
    override = "xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    cases = [
        ([], xla_options.CPU_OPTIONS),
        (["--xla-defaults"], {}),
        (["--xla-option", override],
         {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}),
    ]
    for i, (extra, expected) in enumerate(cases):
        out = tmp_path / f"r{i}.json"
        assert profile.main([*base, *extra, "--json", str(out)]) == 0
        report = json.loads(out.read_text())
        assert report["compiler_options"] == expected
        assert report["latency_ms"] is None and report["page_faults_per_run"] is None


def test_output_size_divides_by_the_scale():
    parser = profile.build_parser()
    args = parser.parse_args(["--scale", "3", "--output-size", "720x1280"])
    assert profile._input_shape(args, 3) == (1, 240, 426, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input-size", "256"], "--input-size"),
        (["--input-size", "axb"], "--input-size"),
        (["--input-size", "12x40"], "13x13"),
        (["--scale", "4", "--output-size", "40x400"], "--output-size"),
        (["--dtype", "float16"], "--dtype"),
        (["--checkpoint", "/nonexistent/model.pt"], "no such file"),
        (["--config", "/nonexistent/config.py"], "--config"),
        (["--batch-size", "0"], "--batch-size"),
        (["--scale", "0"], "scale"),
        (["--no-such-flag"], "unrecognized"),
        (["--n-ffgs", "1", "--input-size", "13x13", "--xla-option", "xla_no_such_option=1"],
         "XLA rejected"),
        (["--xla-option", "novalue"], "--xla-option"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(argv, message, capsys):
    assert profile.main([*argv, MALLOC]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert captured.out == ""


def test_config_and_checkpoint_together_are_refused(tiny_config, capsys):
    assert profile.main(["--config", str(tiny_config), "--checkpoint", "x.pt"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_module_entry_point_reports_errors_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "maffsrn_jax.profile", "--input-size", "0x5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")


# --- the timing loop (no frameworks involved) ----------------------------------------------


class FakeClock:
    """A clock that advances only by the step durations handed to it (seconds)."""

    def __init__(self, durations: list[float]):
        self.now = 100.0
        self.durations = list(durations)

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.now += self.durations.pop(0)


def test_time_steps_times_consecutive_steps_after_the_warmup():
    # Two warm-up steps (5 s, 7 s: never timed), then three timed ones.
    clock = FakeClock([5.0, 7.0, 0.010, 0.020, 0.040])
    faults = iter([1000, 1090])
    times, per_step = profile.time_steps(
        clock.run, steps=3, warmup=2, clock=clock, page_faults=lambda: next(faults)
    )
    assert times == pytest.approx([10.0, 20.0, 40.0])
    assert per_step == 30.0  # 90 faults over 3 timed steps
    assert clock.durations == []
    clock = FakeClock([0.5])
    assert profile.time_steps(clock.run, 1, 0, clock=clock, page_faults=lambda: None) == (
        [500.0], None)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux) only")
def test_module_entry_point_keeps_freed_memory(tiny_config, tmp_path):
    out = tmp_path / "r.json"
    subprocess.run(
        [sys.executable, "-m", "maffsrn_jax.profile", "--config", str(tiny_config),
         "--input-size", "13x13", "--repeats", "1", "--warmup", "0", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(out.read_text())
    assert report["malloc_keeps_freed_memory"] is True
    assert isinstance(report["page_faults_per_run"], int)  # measured, not None
