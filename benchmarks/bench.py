"""Development benchmarks, run from a checkout: `python -m benchmarks.bench <subcommand> ...`.

`input`: throughput of the training input pipeline after its cache is built,

    python -m benchmarks.bench input [--data-dir DIR] --scale 2 --batch-size 16 \\
        --patch-size 48 --seconds 10

DIR may be a DIV2K tree, an EDSR benchmark tree or a folder of HR images (the layout is
detected); without --data-dir the embedded scikit-image photographs are used. Prints the
cache build time, the peak resident memory while sampling and, as the last line,
`patches/s: <number>` (LR/HR patch pairs per second).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence

from benchmarks import faults
from maffsrn_jax import data
from maffsrn_jax.configs.default import data_config
from maffsrn_jax.errors import run_cli


def _reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS counter (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib(since_reset: bool) -> float:
    if since_reset:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def run_input(args: argparse.Namespace) -> int:
    """The `input` subcommand."""
    cfg = data_config()
    if args.data_dir:
        cfg.source = data.detect_source(args.data_dir)
        cfg.dir = args.data_dir
    else:
        cfg.source = "embedded"
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    start = time.perf_counter()
    train, _ = data.get_datasets(cfg, args.scale, patch_size=args.patch_size)
    where = f" {args.data_dir}" if args.data_dir else ""
    print(f"data: {cfg.source}{where}, {len(train)} training images; "
          f"cache ready in {time.perf_counter() - start:.1f}s", flush=True)

    since_reset = _reset_peak_rss()
    batches = data.train_iterator(
        train, start_step=0, seed=0, global_batch_size=args.batch_size,
        patch_size=args.patch_size, scale=args.scale, num_threads=args.num_threads,
        prefetch=args.prefetch)
    with batches:
        for _ in range(args.prefetch + 2):  # Warm-up: threads started, queue full.
            next(batches)
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < args.seconds:
            next(batches)
            count += 1
    rate = count * args.batch_size / elapsed
    scope = "while sampling" if since_reset else "whole process"
    print(f"batches: {count} in {elapsed:.1f}s ({args.num_threads} threads, "
          f"prefetch {args.prefetch}); peak RSS ({scope}): {_peak_rss_mib(since_reset):.0f} MiB")
    print(f"patches/s: {rate:.0f}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("input", help="training input pipeline throughput (patch pairs/s)")
    p.add_argument("--data-dir", default="",
                   help="DIV2K tree, benchmark tree or HR folder (default: embedded photos)")
    p.add_argument("--scale", type=_positive, default=2)
    p.add_argument("--batch-size", type=_positive, default=16, help="global batch size")
    p.add_argument("--patch-size", type=_positive, default=48, help="LR patch size")
    p.add_argument("--seconds", type=float, default=10.0, help="measuring time")
    p.add_argument("--num-threads", type=int, default=2, help="sampling threads")
    p.add_argument("--prefetch", type=_positive, default=4, help="batches computed ahead")
    p.add_argument("--cache-dir", default="", help="decoded-image cache (default: ~/.cache)")
    p.set_defaults(func=run_input)

    faults.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
