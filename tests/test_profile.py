"""maffsrn_jax.profile (sizes against the official numbers, the CLI's report) and speed's harness.

Counts use abstract evaluation only; the CLI runs compile a 1-FFG, 2-MAB model on 13x13, the
speed runs a 1-FFG model on 16x16 in its two worker processes. Timing is never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from maffsrn_jax import cpu_conv, profile, speed, xla_options
from maffsrn_jax.models import MAFFSRN

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
    assert profile.param_count(MAFFSRN(scale, n_ffgs=n_ffgs)) == OFFICIAL_PARAMS[n_ffgs, scale]


def test_macs_x4_256_matches_aim2020():
    macs = profile.conv_macs(MAFFSRN(4), (1, 256, 256, 3))
    assert round(macs / 1e9, 2) == 27.05


@pytest.mark.parametrize("n_ffgs, scale", sorted(OFFICIAL_MACS_720P))
def test_macs_720p_match_official(n_ffgs, scale):
    shape = (1, 720 // scale, 1280 // scale, 3)
    macs = profile.conv_macs(MAFFSRN(scale, n_ffgs=n_ffgs), shape)
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
    assert profile.conv_macs(model, (1, h, w, 3)) == _hand_counted_macs(scale, h, w, 2, 3)
    # A batch multiplies the count.
    assert profile.conv_macs(model, (3, h, w, 3)) == 3 * _hand_counted_macs(scale, h, w, 2, 3)


def test_macs_follow_the_ablations():
    shape = (1, 16, 16, 3)
    full = profile.conv_macs(MAFFSRN(2, n_ffgs=1), shape)
    no_cea = profile.conv_macs(MAFFSRN(2, n_ffgs=1, use_cea=False), shape)
    assert full - no_cea == 4 * 16 * 16 * (32 * 32 + 25 * 32)
    # HFF replaces three 64 -> 32 reductions by one 128 -> 32: 2 x 64 x 32 fewer per pixel.
    hff = profile.conv_macs(MAFFSRN(2, n_ffgs=1, fusion="hff"), shape)
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
    assert report["params"] == profile.param_count(model)
    assert report["macs"] == profile.conv_macs(model, (2, 13, 15, 3))
    assert "macs" in capsys.readouterr().out
    # A TensorBoard / Perfetto-readable trace and the two program texts.
    assert list(trace.rglob("*.xplane.pb")), sorted(trace.rglob("*"))
    assert list(trace.rglob("*.trace.json.gz"))
    assert "stablehlo" in (hlo / "forward.stablehlo.mlir").read_text()
    assert "ENTRY" in (hlo / "forward.optimized.hlo.txt").read_text()


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


@pytest.mark.skipif(not cpu_conv.available(), reason="the AVX-512 kernels do not run here")
def test_xla_cost_counts_the_work_of_the_cpu_kernels(monkeypatch):
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


# --- speed.py's harness (no frameworks involved) --------------------------------------------


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
    times, per_step = speed.time_steps(
        clock.run, steps=3, warmup=2, clock=clock, page_faults=lambda: next(faults)
    )
    assert times == pytest.approx([10.0, 20.0, 40.0])
    assert per_step == 30.0  # 90 faults over 3 timed steps
    assert clock.durations == []
    clock = FakeClock([0.5])
    assert speed.time_steps(clock.run, 1, 0, clock=clock, page_faults=lambda: None) == (
        [500.0], None)


def test_round_order_reverses_every_round():
    assert speed.round_order(["jax", "torch"], 4) == [
        ["jax", "torch"], ["torch", "jax"], ["jax", "torch"], ["torch", "jax"]]
    assert speed.round_order(["jax", "torch", "onnxruntime"], 2) == [
        ["jax", "torch", "onnxruntime"], ["onnxruntime", "torch", "jax"]]


def _fake_turns(calls: list, times: dict[str, list[list[float]]]):
    """Turns that log (side, steps, warmup) and return each side's next round of times."""
    rounds = {side: iter(ts) for side, ts in times.items()}

    def turn(side):
        def run(steps, warmup):
            calls.append((side, steps, warmup))
            return next(rounds[side])

        return run

    return {side: turn(side) for side in times}


def test_alternate_runs_turns_abba_and_reports_the_median_of_round_medians():
    calls: list = []
    times = {
        "jax": [[10.0, 11.0, 30.0], [12.0, 12.0, 12.0], [9.0, 50.0, 8.0], [14.0, 13.0, 90.0]],
        "torch": [[20.0, 21.0, 22.0], [30.0, 30.0, 31.0], [18.0, 19.0, 90.0], [25.0, 24.0, 26.0]],
    }
    result = speed.alternate(_fake_turns(calls, times), rounds=4, steps=3, warmup=2)
    assert [side for side, _, _ in calls] == ["jax", "torch", "torch", "jax"] * 2
    assert all(steps == 3 and warmup == 2 for _, steps, warmup in calls)
    # Round medians: JAX 11, 12, 9, 14; PyTorch 21, 30, 19, 25.
    assert result["jax_round_ms"] == [11.0, 12.0, 9.0, 14.0]
    assert result["torch_round_ms"] == [21.0, 30.0, 19.0, 25.0]
    assert result["jax_ms"] == 11.5 and result["torch_ms"] == 23.0
    assert result["jax_ms_range"] == [9.0, 14.0] and result["torch_ms_range"] == [19.0, 30.0]
    assert result["ratio"] == 0.5
    # Per-round ratios 11/21, 12/30, 9/19, 14/25: the median of the middle two.
    assert result["ratio_of_pairs"] == round((9 / 19 + 11 / 21) / 2, 3)
    assert result["rounds"] == result["repeats"] == 4 and result["steps_per_round"] == 3
    assert len(result["jax_all_ms"]) == len(result["torch_all_ms"]) == 12


def test_alternate_a_third_side_rotates_and_gets_its_own_ratio():
    calls: list = []
    times = {"jax": [[4.0], [4.0]], "torch": [[12.0], [12.0]], "torch_compile": [[2.0], [2.0]]}
    result = speed.alternate(_fake_turns(calls, times), rounds=2, steps=1, warmup=0)
    assert [c[0] for c in calls] == [
        "jax", "torch", "torch_compile", "torch_compile", "torch", "jax"]
    assert result["ratio"] == pytest.approx(1 / 3, abs=1e-3)
    assert result["ratio_vs_torch_compile"] == result["ratio_of_pairs_vs_torch_compile"] == 2.0
    env = {"device": "gpu: X (x1)", "torch_threads": 2, "jax": "0", "torch": "0", "pause_s": 0,
           "xla_compiler_options": {}}
    setting = {"scale": 2, "batch": 1, "size": [16, 16]}
    train = {"setting": setting, **result, "jax_steps_per_s": 250.0, "torch_steps_per_s": 83.3}
    table = speed.format_table({"train": train, "environment": env})
    assert "JAX/torch.compile" in table and "train steps/s: JAX 250.0, PyTorch 83.3" in table
    assert "2 alternating rounds of 0 untimed + 1 timed steps" in table
    cpu_scale = {"setting": setting, **result, "jax_ms": 1843.2, "jax_ms_range": [1766.0, 2115.4]}
    table = speed.format_table({"inference": cpu_scale, "environment": env})
    assert "| 1843 (1766-2115) |" in table  # whole milliseconds, not 1.84e+03


@pytest.mark.parametrize(
    "argv",
    [
        ["--repeats", "0"],
        ["--rounds", "0"],
        ["--steps", "0"],
        ["--rounds", "2", "--repeats", "3"],
        ["--only", "everything"],
        ["--pause", "-1"],
        ["--device", "tpu"],
        ["--inference-size", "12x300"],
        ["--inference-size", "256"],
    ],
)
def test_speed_bad_flags_give_one_line_and_exit_2(argv, capsys):
    assert speed.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


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


# --- speed.py with real workers (a tiny model; needs torch and adamp) -------------------------

TINY_SETTING = {"scale": 2, "n_ffgs": 1, "batch": 1, "size": (16, 16)}


def test_speed_runs_each_framework_in_its_own_worker():
    pytest.importorskip("torch")
    results = speed.run_benchmarks(
        only=("inference",), repeats=1, warmup=0, pause=0, settings={"inference": TINY_SETTING},
        xla_overrides={"xla_cpu_enable_fast_math": False}, steps=2,
    )
    r = results["inference"]
    assert r["agreement"] < 1e-4  # the same weights and input on both sides
    assert len(r["jax_all_ms"]) == len(r["torch_all_ms"]) == 2 and r["rounds"] == 1
    # ONNX Runtime and LiteRT ran (and agree), or the table says in one line why not.
    for side in ("onnxruntime", "litert"):
        if f"{side}_ms" in r:
            assert r[f"agreement_{side}"] < 1e-4
            assert len(r[f"{side}_all_ms"]) == 2
        else:
            reason = r.get(f"{side}_skipped") or r[f"{side}_error"]
            assert reason in speed.format_table(results) and "\n" not in reason
    env = results["environment"]
    assert env["jax_malloc_keeps_freed_memory"] is sys.platform.startswith("linux")
    assert env["torch_malloc_keeps_freed_memory"] is False  # glibc's defaults, as torch runs
    assert env["device"].startswith("cpu") and env["torch_threads"] >= 1
    assert "PyTorch no" in speed.format_table(results)
    # The worker resolved the package's options and added the override to them.
    want = {**(xla_options.compiler_options() or {}), "xla_cpu_enable_fast_math": False}
    assert env["xla_compiler_options"] == want


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="needs a machine without a GPU")
def test_speed_xla_conv_side_is_jax_without_the_cpu_kernels():
    pytest.importorskip("torch")
    results = speed.run_benchmarks(
        only=("inference",), rounds=1, warmup=0, settings={"inference": TINY_SETTING},
        steps=1, onnx=False, litert=False, xla_conv_side=True,
    )
    r, env = results["inference"], results["environment"]
    assert len(r["jax_xla_conv_all_ms"]) == 1
    assert r["agreement_jax_xla_conv"] < 1e-4  # the same model, other convolutions
    assert env["jax_xla_conv_cpu_kernels"] is False
    assert env["jax_cpu_kernels"] is cpu_conv.available()
    table = speed.format_table(results)
    assert "JAX/JAX, XLA convs" in table and "AVX-512 kernels (cpu_conv): JAX " in table


def test_speed_on_a_missing_gpu_is_one_line(capsys):
    argv = ["--device", "gpu", "--only", "inference", "--repeats", "1", "--warmup", "0"]
    assert speed.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: jax worker: ")
    assert "--device gpu: JAX cannot start that backend" in lines[0]


def test_a_failing_torch_compile_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    # Inductor cannot build its CPU kernels without a C++ compiler (fresh cache: nothing
    # compiled earlier can stand in).
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    results = speed.run_benchmarks(
        only=("inference",), repeats=1, warmup=0, pause=0, settings={"inference": TINY_SETTING},
        torch_compile=True, steps=1, onnx=False, litert=False,
    )
    r = results["inference"]
    assert r["torch_compile_error"].startswith("torch_compile worker: ")
    assert "\n" not in r["torch_compile_error"]
    assert len(r["jax_all_ms"]) == len(r["torch_all_ms"]) == 1 and "torch_compile_ms" not in r
    assert "inference: torch.compile failed: " in speed.format_table(results)
    assert "onnxruntime_skipped" not in r  # --no-onnx: left out, not skipped
    assert "litert_skipped" not in r and "litert_ms" not in r


def test_speed_worker_errors_become_one_line():
    pytest.importorskip("torch")
    too_small = {**TINY_SETTING, "size": (8, 8)}
    with pytest.raises(speed.SpeedError, match=r"^jax worker: ValueError: input 8x8") as e:
        speed.run_benchmarks(only=("inference",), repeats=1, settings={"inference": too_small})
    assert "\n" not in str(e.value)


# --- the ONNX Runtime side, against the exporter's contract -----------------------------------


def _fake_exporter(layout: str, calls: list):
    """A stand-in `maffsrn_jax.export` keeping `export_onnx`'s signature: its graph upsamples
    by the model's scale (nearest), in `layout`, so the side's plumbing can be checked."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    def export_onnx(model, variables, path, *, precision="float32", calibration=None) -> None:
        calls.append((model.scale, sorted(variables), precision, calibration))
        s = float(model.scale)
        scales = [1.0, 1.0, s, s] if layout == "NCHW" else [1.0, s, s, 1.0]
        shape = ["n", 3, "h", "w"] if layout == "NCHW" else ["n", "h", "w", 3]
        graph = helper.make_graph(
            [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
            "fake",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [helper.make_tensor("scales", TensorProto.FLOAT, [4], scales)],
        )
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)

    module = type(sys)("maffsrn_jax.export")
    module.export_onnx = export_onnx
    return module


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_onnx_side_builds_from_export_onnx_and_returns_nhwc(layout, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    calls: list = []
    monkeypatch.setitem(sys.modules, "maffsrn_jax.export", _fake_exporter(layout, calls))
    setting = {**TINY_SETTING, "size": (16, 20)}
    job = speed.Job("inference", setting, speed.initial_weights(setting, 0), 0, None, {}, "cpu")
    run, first, env = speed._onnx_run(job)
    assert calls == [(2, ["params"], "float32", None)]
    assert env["onnxruntime_input_layout"] == layout
    assert first.shape == (1, 32, 40, 3)  # NHWC whatever the graph's layout
    x = np.random.default_rng(0).random((1, 16, 20, 3), dtype=np.float32)
    np.testing.assert_array_equal(first, x.repeat(2, axis=1).repeat(2, axis=2))
    assert run().shape == (first.shape if layout == "NHWC" else (1, 3, 32, 40))
    with pytest.raises(speed.SpeedError, match="inference only"):
        speed._onnx_run(job._replace(name="train"))
