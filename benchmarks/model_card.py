"""The shipped weights' model card figures: scores, validation curves, visual comparison.

    python -m benchmarks.model_card --output docs/weights \
        --data Set5=DIR --data Set14=DIR --data B100=DIR --data Urban100=DIR \
        --data Manga109=DIR [--runs RUN_ROOT] [--scales 2 3 4]

Scores every shipped `maffsrn_x{s}` and MATLAB bicubic on each dataset with eval.py's
conventions (Y channel, s pixels shaved, LR made from HR by MATLAB-bicubic), plus the
self-ensemble (x8) on Set5 and Set14, and writes `scores.json`. With `--runs` (a folder holding
the training workdirs `x2/`, `x3/`, `x4/`) it also copies each run's validation PSNR against
steps into `validation.json` (`--continue-curves`: appended to the curves there, for runs that
trained on from those weights); the plot `validation.png` is drawn from that file, so it can be
redrawn from the repository alone. `comparison.png` shows bicubic | MAFFSRN | HR crops of the
first image of a few datasets at the largest scale. Needs matplotlib (the `dev` extra).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from maffsrn_jax import pretrained
from maffsrn_jax.convert import load_pretrained
from maffsrn_jax.errors import run_cli
from maffsrn_jax.evaluation import (
    array_upscaler,
    bicubic_upscaler,
    evaluate,
    find_samples,
    load_pair,
    mean,
)
from maffsrn_jax.files import write_file_atomic, write_json_atomic

ENSEMBLE_SETS = ("Set5", "Set14")  # eight passes per image stay cheap on a CPU there
COMPARISON_SETS = ("Urban100", "B100", "Manga109")
CROP = 192  # HR pixels


def _row(results: list[dict]) -> list[float]:
    return [round(mean(results, "psnr"), 4), round(mean(results, "ssim"), 5)]


def score_all(datasets: dict[str, Path], scales: list[int]) -> dict:
    out: dict = {}
    for scale in scales:
        model, variables = load_pretrained(f"maffsrn_x{scale}")
        plain = array_upscaler(model, variables)
        ensemble = array_upscaler(model, variables, self_ensemble=True)
        for name, folder in datasets.items():
            samples = find_samples(folder, scale)
            t0 = time.perf_counter()
            entry = {
                "images": len(samples),
                "bicubic": _row(evaluate(bicubic_upscaler(scale), samples, scale)),
                "maffsrn": _row(evaluate(plain, samples, scale, desc=f"{name} x{scale}")),
            }
            if name in ENSEMBLE_SETS:
                entry["maffsrn_x8"] = _row(evaluate(ensemble, samples, scale))
            out.setdefault(f"x{scale}", {})[name] = entry
            print(f"x{scale} {name}: {entry} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def read_curves(runs: Path, scales: list[int], after: dict | None = None) -> dict:
    """Each run's validation PSNR against steps; with `after` (curves already recorded), a
    run that continued from those weights is appended, its steps counted on from theirs."""
    curves = dict(after or {})
    for scale in scales:
        before = curves.get(f"x{scale}", [])
        offset = before[-1][0] if before else 0
        path = runs / f"x{scale}" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        curves[f"x{scale}"] = before + [
            [offset + r["step"], round(r["val_psnr"], 4)] for r in records if "val_psnr" in r
        ]
    return curves


def plot_curves(curves: dict, path: Path, reference: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (key, points) in zip(axes[0], sorted(curves.items()), strict=True):
        steps, psnr = zip(*points, strict=True)
        ax.plot(steps, psnr, marker=".", label="MAFFSRN (ours)")
        if key in reference:
            ax.axhline(reference[key], color="grey", linestyle="--", label="VDSR (published)")
        ax.set_title(f"{key}: Set5 validation")
        ax.set_xlabel("training step")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def plot_comparison(datasets: dict[str, Path], scale: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maffsrn_jax import inference, metrics

    model, variables = load_pretrained(f"maffsrn_x{scale}")
    names = [n for n in COMPARISON_SETS if n in datasets]
    fig, axes = plt.subplots(len(names), 3, figsize=(9, 3.1 * len(names)), squeeze=False)
    for row, name in zip(axes, names, strict=True):
        sample = find_samples(datasets[name], scale)[0]
        lr, hr = load_pair(sample, scale)
        sr = metrics.quantize(inference.upscale_array(model, variables, lr / np.float32(255)))
        bicubic = bicubic_upscaler(scale)(lr)
        # A fixed crop (the image's centre), not one chosen to flatter either method.
        top, left = (hr.shape[0] - CROP) // 2, (hr.shape[1] - CROP) // 2
        crop = np.s_[top : top + CROP, left : left + CROP]
        for ax, image, title in zip(row, (bicubic, sr, hr), ("bicubic", "MAFFSRN", "HR"),
                                    strict=True):
            ax.imshow(image[crop], interpolation="nearest")
            psnr = "" if title == "HR" else f" {metrics.psnr(image, hr, scale=scale):.2f} dB"
            ax.set_title(f"{name} {sample.name}: {title}{psnr}", fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# Published PSNR (dB, Y), as the MAFFSRN paper's Table 5 copies them; None: not published
# there. FSRCNN trained on T91, VDSR on 291 images (T91 + BSD200), MAFFSRN on DIV2K.
PUBLISHED = {
    "FSRCNN": {"x2": {"Set5": 37.00, "Urban100": 29.88},
               "x3": {"Set5": 33.16, "Urban100": 26.43},
               "x4": {"Set5": 30.71, "Urban100": 24.62}},
    "VDSR": {"x2": {"Set5": 37.53, "B100": 31.90, "Urban100": 30.76},
             "x3": {"Set5": 33.66, "Set14": 29.77, "B100": 28.82, "Urban100": 27.14},
             "x4": {"Set5": 31.35, "Urban100": 25.18}},
    "MAFFSRN (paper, DIV2K)": {
        "x2": {"Set5": 37.97, "Set14": 33.49, "B100": 32.14, "Urban100": 31.96},
        "x3": {"Set5": 34.32, "Urban100": 28.13},
        "x4": {"Set5": 32.18, "B100": 27.57, "Urban100": 26.04}},
}
VDSR_SET5 = {k: v["Set5"] for k, v in PUBLISHED["VDSR"].items()}


def _cells(ours: dict, sets: list[str], field: str) -> list[str]:
    return [f"{ours[s][field][0]:.2f} / {ours[s][field][1]:.4f}"
            if s in ours and field in ours[s] else "" for s in sets]


def markdown(scores: dict, sets: list[str]) -> str:
    """One table per scale: our rows (PSNR / SSIM) beside the published ones (PSNR)."""
    lines = []
    for key in sorted(scores):
        lines += [f"**{key}** (PSNR dB / SSIM, Y channel, {key[1:]} px shaved)", "",
                  "| model | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
        ours = scores[key]
        cells = functools.partial(_cells, ours, sets)

        lines.append("| bicubic | " + " | ".join(cells("bicubic")) + " |")
        for name, table in PUBLISHED.items():
            row = table.get(key, {})
            lines.append(f"| {name} | " + " | ".join(
                f"{row[s]:.2f}" if s in row else "—" for s in sets) + " |")
        lines.append(f"| **maffsrn_{key}** (ours) | " + " | ".join(
            f"**{c}**" if c else "" for c in cells("maffsrn")) + " |")
        lines.append(f"| maffsrn_{key} + self-ensemble x8 | " + " | ".join(
            cells("maffsrn_x8")) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_card",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", default=[], metavar="NAME=DIR",
                        help="a test set (HR images, or the EDSR benchmark layout)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the figures")
    parser.add_argument("--runs", type=Path, help="folder with the training workdirs x2/ x3/ x4/")
    parser.add_argument("--continue-curves", action="store_true",
                        help="the runs continued from the weights whose curves validation.json "
                             "holds: append to them instead of replacing them")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--skip-scores", action="store_true",
                        help="only the curves and pictures (scores.json kept as it is)")
    args = parser.parse_args(argv)

    def run() -> int:
        datasets = {}
        for value in args.data:
            name, _, folder = value.partition("=")
            if not folder:
                parser.error(f"--data {value!r}: expected NAME=DIR")
            datasets[name] = Path(folder)
        missing = [f"maffsrn_x{s}" for s in args.scales
                   if f"maffsrn_x{s}" not in pretrained.pretrained_names()]
        if missing:
            parser.error(f"--scales: no shipped weights {', '.join(missing)}")
        args.output.mkdir(parents=True, exist_ok=True)
        curves_file = args.output / "validation.json"
        curves = json.loads(curves_file.read_text()) if curves_file.is_file() else None
        if args.continue_curves and (curves is None or not args.runs):
            parser.error(f"--continue-curves: needs --runs and a {curves_file} to continue")
        if args.runs:
            curves = read_curves(args.runs, args.scales,
                                 curves if args.continue_curves else None)
            write_json_atomic(curves_file, curves)
        if curves is not None:
            plot_curves(curves, args.output / "validation.png", VDSR_SET5)
        if any(name in datasets for name in COMPARISON_SETS):
            plot_comparison(datasets, max(args.scales), args.output / "comparison.png")
        if datasets and not args.skip_scores:
            scores_file = args.output / "scores.json"
            scores = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
            scores.update(score_all(datasets, args.scales))
            write_json_atomic(scores_file, scores)
        scores_file = args.output / "scores.json"
        if scores_file.is_file():
            scores = json.loads(scores_file.read_text())
            sets = [s for s in ("Set5", "Set14", "B100", "Urban100", "Manga109")
                    if any(s in row for row in scores.values())]
            print(markdown(scores, sets))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
