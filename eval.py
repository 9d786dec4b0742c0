"""Scores a checkpoint, or plain bicubic upscaling, on SR benchmarks as the published tables do.

    python eval.py --checkpoint CKPT --scale 2 --data Set5=benchmark/Set5
    python eval.py --bicubic --scale 4 --data Set5=A/Set5/HR --data Set14=B --json scores.json

Conventions (`maffsrn_jax.metrics`): PSNR and SSIM on MATLAB's rounded Y channel with `scale`
pixels shaved from each border, SR output quantised to uint8 first. A dataset DIR is either
- the EDSR benchmark layout, `DIR/HR/<name>.png` with `DIR/LR_bicubic/X{s}/<name>x{s}.png`, or
- a folder of HR images only (DIR itself, or DIR/HR without an LR_bicubic/ folder), whose LR
  images are made here: HR mod-cropped to a multiple of the scale, then MATLAB-bicubic
  downscaled (`imresize`), as the literature makes them.
`--bicubic` scores MATLAB-bicubic upscaling of the LR images: the baseline row of every table.
Self-ensemble (`--self-ensemble`) averages the 8 flips/transposes (EDSR+); `--tile N` runs the
model on N x N LR tiles (scores differ slightly from untiled ones; the default is untiled).

Exit codes: 0 ok, 2 bad input (one `error:` line on stderr naming the file or flag), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maffsrn_jax.errors import run_cli
from maffsrn_jax.evaluation import (  # noqa: F401 (the names scripts import from eval.py)
    EvalError,
    Sample,
    artifact_upscaler,
    bicubic_upscaler,
    evaluate,
    find_samples,
    format_table,
    load_pair,
    mean,
    model_upscaler,
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
        prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Orbax directory, .pt/.pth or .safetensors")
    source.add_argument("--bicubic", action="store_true", help="score MATLAB-bicubic upscaling")
    parser.add_argument("--scale", type=int, required=True, help="upscaling factor")
    parser.add_argument("--data", action="append", required=True, metavar="NAME=DIR",
                        help="a dataset to score (repeatable)")
    parser.add_argument("--json", help="write per-image and mean scores to this file")
    parser.add_argument("--save-images", metavar="DIR",
                        help="save the SR images as DIR/NAME/X{scale}/<name>.png")
    parser.add_argument("--self-ensemble", action="store_true", help="x8 geometric ensemble")
    parser.add_argument("--tile", type=int, default=0,
                        help="run the model on N x N LR tiles (default 0: whole images)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="tile overlap in LR pixels (default: inference.DEFAULT_OVERLAP)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.scale < 2:
        raise EvalError(f"--scale must be an integer >= 2, got {args.scale}")
    if args.bicubic and (args.self_ensemble or args.tile or args.overlap is not None):
        raise EvalError("--self-ensemble, --tile and --overlap apply to --checkpoint only")
    datasets = _parse_data(args.data)
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise EvalError(f"--json {json_path}: directory {json_path.parent} does not exist")
    # Check every dataset before the (slow) model load and scoring.
    samples = {name: find_samples(d, args.scale) for name, d in datasets.items()}

    if args.bicubic:
        upscale = bicubic_upscaler(args.scale)
    else:
        upscale = model_upscaler(args.checkpoint, args.scale, tile=args.tile or None,
                                      overlap=args.overlap, self_ensemble=args.self_ensemble)

    report = {}
    for name, items in samples.items():
        save_dir = None
        if args.save_images:
            save_dir = Path(args.save_images) / name / f"X{args.scale}"
            save_dir.mkdir(parents=True, exist_ok=True)
        results = evaluate(upscale, items, args.scale, desc=f"{name} x{args.scale}",
                           save_dir=save_dir)
        print(format_table(name, args.scale, results), flush=True)
        report[name] = {
            "scale": args.scale,
            "psnr": mean(results, "psnr"),
            "ssim": mean(results, "ssim"),
            "images": results,
        }
    print()
    for name, r in report.items():
        print(f"{name} x{args.scale}: PSNR {r['psnr']:.2f} dB  SSIM {r['ssim']:.4f}"
              f"  ({len(r['images'])} images)")
    if json_path is not None:
        write_json_atomic(json_path, report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from maffsrn_jax import xla_options  # imports JAX, which --help does not need

    xla_options.keep_freed_memory()

    def body() -> None:
        run(args)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
