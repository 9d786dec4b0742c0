"""maffsrn_jax.trace_summary on a hand-written trace (no JAX involved)."""

from __future__ import annotations

import gzip
import json

import pytest

from maffsrn_jax import trace_summary


def _op(name: str, dur: float, run: int, module: str = "jit_step") -> dict:
    return {"ph": "X", "pid": 1, "tid": 2, "ts": 0.0, "dur": dur, "name": name,
            "args": {"hlo_op": name, "hlo_module": module, "run_id": str(run)}}


@pytest.fixture()
def trace(tmp_path):
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 0.0, "dur": 9e6, "name": "ThunkExecutor::Execute"},
    ]
    for run in (1, 2):  # two runs of the step: 600 us of convs, 300 of a fusion, 100 of a dot
        events += [
            _op("conv_general_dilated.3", 400.0, run), _op("conv_general_dilated", 200.0, run),
            _op("broadcast_add_fusion.12", 300.0, run), _op("dot_general.1", 100.0, run),
        ]
    events.append(_op("wrapped_reverse", 50.0, 7, module="jit_init"))  # another program
    path = tmp_path / "plugins" / "profile" / "run" / "host.trace.json.gz"
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return tmp_path


def test_summary_groups_op_kinds_per_run_of_the_busiest_program(trace):
    events = trace_summary.load_op_events(trace_summary.find_trace(trace))
    assert len(events) == 9
    rows = trace_summary.summarize(events)
    assert [(r.name, r.ms_per_run, r.calls_per_run) for r in rows] == [
        ("conv_general_dilated", 0.6, 2), ("broadcast_add_fusion", 0.3, 1), ("dot_general", 0.1, 1)]
    assert [r.share for r in rows] == pytest.approx([0.6, 0.3, 0.1])
    by_op = trace_summary.summarize(events, by="op")
    assert by_op[0].name == "conv_general_dilated.3" and by_op[0].ms_per_run == 0.4
    other = trace_summary.summarize(events, module="jit_init")
    assert [(r.name, r.ms_per_run) for r in other] == [("wrapped_reverse", 0.05)]


def test_cli_prints_a_table_and_refuses_a_folder_without_trace(trace, tmp_path, capsys):
    assert trace_summary.main([str(trace), "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "| conv_general_dilated | 0.60 | 60.0% | 2 |" in out and "| (2 more) | 0.40 |" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert trace_summary.main([str(empty)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
