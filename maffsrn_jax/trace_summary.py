"""Where a traced program's time goes, by XLA op: `python -m maffsrn_jax.trace_summary DIR`.

Reads the trace that `python -m maffsrn_jax.profile ... --trace DIR` writes (the newest
`*.trace.json.gz` under DIR) and sums the duration of every executed HLO op per kind, per
run of the program:

    python -m maffsrn_jax.profile --scale 2 --train --input-size 48x48 --batch-size 16 \\
        --repeats 3 --trace /tmp/trace --dump-hlo /tmp/hlo
    python -m maffsrn_jax.trace_summary /tmp/trace --top 20

An op's kind is its HLO name without the numeric suffix (`conv_general_dilated.14` ->
`conv_general_dilated`, `broadcast_add_fusion.3` -> `broadcast_add_fusion`); `--by op` keeps
the full names, to look them up in the optimised HLO that `--dump-hlo` writes. Ops of one
program can run concurrently on XLA:CPU's threads, so the shares are of summed op time, not
of wall time; run the program single-threaded
(`--xla-option xla_cpu_multi_thread_eigen=false` under `taskset -c 0`) to read them as
fractions of the step.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

__all__ = ["OpEvent", "Row", "find_trace", "format_rows", "load_op_events", "main", "summarize"]

_SUFFIX = re.compile(r"\.\d+$")


class OpEvent(NamedTuple):
    """One executed HLO op of a traced program."""

    op: str  # the HLO instruction name, e.g. 'conv_general_dilated.14'
    module: str  # the HLO module, e.g. 'jit_apply' or 'jit_step'
    run_id: str  # one id per execution of the program
    dur_us: float


class Row(NamedTuple):
    """One line of the summary: a kind (or op) of HLO op."""

    name: str
    ms_per_run: float
    share: float  # of the summed op time
    calls_per_run: float


def find_trace(path: str | Path) -> Path:
    """The newest `*.trace.json.gz` at or under `path`."""
    path = Path(path)
    if path.is_file():
        return path
    traces = sorted(path.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {path}")
    return traces[-1]


def load_op_events(trace: str | Path) -> list[OpEvent]:
    """The HLO-op events ('X' events whose args name an `hlo_op`) of a Chrome-format trace."""
    with gzip.open(trace, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    ops = []
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") == "X" and "hlo_op" in args:
            ops.append(
                OpEvent(args["hlo_op"], args.get("hlo_module", ""), str(args.get("run_id", "")),
                        float(e.get("dur", 0.0)))
            )
    return ops


def summarize(events: Iterable[OpEvent], by: str = "kind", module: str | None = None) -> list[Row]:
    """Summed op time per kind (or per op with `by='op'`) and run, largest first.

    Runs are told apart by their run ids; `module` keeps one HLO module's ops (the default
    keeps those of the module with the most op time, i.e. the profiled program).
    """
    events = list(events)
    if module is None and events:
        per_module: dict[str, float] = defaultdict(float)
        for e in events:
            per_module[e.module] += e.dur_us
        module = max(per_module, key=per_module.get)
    events = [e for e in events if e.module == module]
    runs = max(1, len({e.run_id for e in events}))
    total: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for e in events:
        name = e.op if by == "op" else _SUFFIX.sub("", e.op)
        total[name] += e.dur_us
        calls[name] += 1
    summed = sum(total.values()) or 1.0
    rows = [
        Row(name, t / runs / 1e3, t / summed, calls[name] / runs) for name, t in total.items()
    ]
    return sorted(rows, key=lambda r: -r.ms_per_run)


def format_rows(rows: list[Row], top: int) -> str:
    """A Markdown table of the first `top` rows and a line for the rest."""
    lines = ["| op | ms per run | share | calls per run |", "|---|---|---|---|"]
    for r in rows[:top]:
        lines.append(f"| {r.name} | {r.ms_per_run:.2f} | {r.share:.1%} | {r.calls_per_run:g} |")
    rest = rows[top:]
    if rest:
        ms = sum(r.ms_per_run for r in rest)
        share = sum(r.share for r in rest)
        lines.append(f"| ({len(rest)} more) | {ms:.2f} | {share:.1%} | |")
    lines.append(f"summed op time per run: {sum(r.ms_per_run for r in rows):.1f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m maffsrn_jax.trace_summary",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="a --trace DIR of profile, or a *.trace.json.gz")
    p.add_argument("--top", type=int, default=25, help="rows to print")
    p.add_argument("--by", choices=("kind", "op"), default="kind")
    p.add_argument("--module", default=None, help="HLO module (default: the busiest)")
    args = p.parse_args(argv)
    try:
        events = load_op_events(find_trace(args.trace))
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {args.trace}: {e}", file=sys.stderr)
        return 2
    if not events:
        print(f"error: {args.trace}: no HLO op events in the trace", file=sys.stderr)
        return 2
    print(format_rows(summarize(events, args.by, args.module), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
