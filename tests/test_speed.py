"""benchmarks.speed: the harness (rounds, ratios, the table) with fake turns, then real
workers on a 1-FFG model on 16x16 (needs torch and adamp). Timing is never asserted."""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest

from benchmarks import speed
from maffsrn_jax import cpu_conv, xla_options

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow


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


# --- speed.py with real workers (a tiny model; needs torch and adamp) -------------------------

TINY_SETTING = {"scale": 2, "n_ffgs": 1, "batch": 1, "size": (16, 16)}


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
