"""Scores a model, or plain bicubic upscaling, on SR benchmarks as the published tables do.

    maffsrn-eval --checkpoint maffsrn_x4 --data Set5=benchmark/Set5
    maffsrn-eval --checkpoint runs/x2 --data Set5=benchmark/Set5 --data Set14=B --json s.json
    maffsrn-eval --bicubic --scale 4 --data Set5=benchmark/Set5/HR

--checkpoint is a training run's folder, a .pt/.pth or .safetensors file, a shipped name
(maffsrn_x4) or a file from maffsrn-export (.onnx, .tflite, .stablehlo). The scale is the
model's own; --scale, if given, must match it. --bicubic scores MATLAB-bicubic upscaling at
--scale: the baseline row of every table.

Conventions: PSNR and SSIM on MATLAB's rounded Y channel with `scale` pixels shaved from each
border, SR output quantised to uint8 first. A dataset DIR is either
- the EDSR benchmark layout, DIR/HR/<name>.png with DIR/LR_bicubic/X{s}/<name>x{s}.png, or
- a folder of HR images only (DIR itself, or DIR/HR without an LR_bicubic/ folder), whose LR
  images are made here: HR cropped to a multiple of the scale, then MATLAB-bicubic
  downscaled, as the literature makes them.
--self-ensemble averages the 8 flips/transposes (EDSR+); --tile N runs the model on N x N LR
tiles (scores differ slightly from untiled ones; the default is untiled). Images that cannot
be read, or whose LR does not fit their HR, are listed at the end; the others are scored.

Exit codes: 0 ok, 1 some images could not be scored, 2 bad input (one `error:` line on stderr
naming the file or flag), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from maffsrn_jax.cli import prog_name
from maffsrn_jax.errors import run_cli
from maffsrn_jax.evaluation import (
    EvalError,
    bicubic_upscaler,
    evaluate,
    find_samples,
    format_table,
    load_upscaler,
    mean,
)
from maffsrn_jax.files import write_json_atomic


def _parse_data(values: list[str]) -> dict[str, Path]:
    datasets: dict[str, Path] = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not name or not directory:
            raise EvalError(f"--data {value!r}: expected NAME=DIR")
        if name in datasets:
            raise EvalError(f"--data: dataset name {name!r} given twice")
        datasets[name] = Path(directory)
    return datasets


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog_name("maffsrn_jax.eval", argv), description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="the model: a run folder, .pt/.pth, .safetensors, a shipped name "
                        "or an exported file")
    source.add_argument("--bicubic", action="store_true", help="score MATLAB-bicubic upscaling")
    parser.add_argument("--scale", type=int,
                        help="upscaling factor: needed with --bicubic, a check with --checkpoint")
    parser.add_argument("--data", action="append", required=True, metavar="NAME=DIR",
                        help="a dataset to score (repeatable)")
    parser.add_argument("--json", help="write per-image and mean scores to this file")
    parser.add_argument("--save-images", metavar="DIR",
                        help="save the SR images as DIR/NAME/X{scale}/<name>.png")
    parser.add_argument("--self-ensemble", action="store_true", help="x8 geometric ensemble")
    parser.add_argument("--tile", type=int, default=0,
                        help="run the model on N x N LR tiles (default 0: whole images)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in LR pixels (default 32)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    if args.scale is not None and args.scale < 2:
        raise EvalError(f"--scale must be an integer >= 2, got {args.scale}")
    if args.bicubic and args.scale is None:
        raise EvalError("--bicubic needs --scale")
    if args.bicubic and (args.self_ensemble or args.tile or args.overlap is not None):
        raise EvalError("--self-ensemble, --tile and --overlap apply to --checkpoint only")
    datasets = _parse_data(args.data)
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise EvalError(f"--json {json_path}: directory {json_path.parent} does not exist")
    # What can be checked without the scale is checked before the (slow) model load.
    for directory in datasets.values():
        if not directory.is_dir():
            raise EvalError(f"{directory}: no such directory")

    if args.bicubic:
        scale = args.scale
        upscale = bicubic_upscaler(scale)
    else:
        upscale, scale = load_upscaler(args.checkpoint, args.scale, tile=args.tile or None,
                                       overlap=args.overlap, self_ensemble=args.self_ensemble)
    samples = {name: find_samples(d, scale) for name, d in datasets.items()}

    report = {}
    failures: list[str] = []
    for name, items in samples.items():
        save_dir = None
        if args.save_images:
            save_dir = Path(args.save_images) / name / f"X{scale}"
            save_dir.mkdir(parents=True, exist_ok=True)
        failed: list[str] = []
        results = evaluate(upscale, items, scale, desc=f"{name} x{scale}", save_dir=save_dir,
                           failures=failed)
        if results:
            print(format_table(name, scale, results), flush=True)
        report[name] = {
            "scale": scale,
            "psnr": mean(results, "psnr") if results else math.nan,
            "ssim": mean(results, "ssim") if results else math.nan,
            "images": results,
        }
        if failed:
            report[name]["failed"] = failed
        failures += failed
    print()
    for name, r in report.items():
        not_scored = f", {len(r['failed'])} not scored" if "failed" in r else ""
        print(f"{name} x{scale}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}"
              f"  ({len(r['images'])} images{not_scored})")
    if json_path is not None:
        write_json_atomic(json_path, report)
    if failures:
        for line in failures:
            print(f"error: {line}", file=sys.stderr)
        total = sum(len(items) for items in samples.values())
        print(f"error: {len(failures)} of {total} images could not be scored (listed above)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from maffsrn_jax import xla_options  # imports JAX, which --help does not need

    xla_options.tune_process()
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
