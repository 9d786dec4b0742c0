"""Scores a checkpoint, or plain bicubic upscaling, on SR benchmarks as the published tables do.

    python eval.py --checkpoint CKPT --scale 2 --data Set5=../shared/benchmarks/Set5
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
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maffsrn_jax import image_io, metrics
from maffsrn_jax.imresize import imresize, modcrop
from maffsrn_jax.input_pipeline import IMAGE_EXTENSIONS


class EvalError(ValueError):
    """Bad command-line input or dataset; the message names the flag, folder or file."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One benchmark image: its name, the HR file and, in the EDSR layout, the LR file."""

    name: str
    hr: Path
    lr: Path | None


def _images_in(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def find_samples(directory: Path, scale: int) -> list[Sample]:
    """Detects the dataset layout of `directory` (see the module docstring) and lists it."""
    if not directory.is_dir():
        raise EvalError(f"{directory}: no such directory")
    hr_dir, lr_root = directory / "HR", directory / "LR_bicubic"
    if hr_dir.is_dir() and lr_root.is_dir():
        lr_dir = lr_root / f"X{scale}"
        if not lr_dir.is_dir():
            raise EvalError(f"{directory}: EDSR benchmark layout without LR_bicubic/X{scale}/")
        samples, missing = [], []
        for hr in _images_in(hr_dir):
            lrs = [lr_dir / f"{hr.stem}x{scale}{suffix}" for suffix in (hr.suffix, ".png")]
            lr = next((p for p in lrs if p.is_file()), None)
            if lr is None:
                missing.append(lrs[0].name)
            samples.append(Sample(hr.stem, hr, lr))
        if missing:
            raise EvalError(
                f"{lr_dir}: no LR image for {len(missing)} HR image(s): {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else "")
            )
    else:
        images_dir = hr_dir if hr_dir.is_dir() else directory
        samples = [Sample(p.stem, p, None) for p in _images_in(images_dir)]
    if not samples:
        raise EvalError(
            f"{directory}: unknown dataset layout: no images in it, nor HR/ + LR_bicubic/X{scale}/"
        )
    return samples


def load_pair(sample: Sample, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR [h, w, 3], HR [s*h, s*w, 3]) uint8 RGB; HR is mod-cropped to a multiple of `scale`."""
    hr = modcrop(image_io.to_rgb_uint8(image_io.load_image(sample.hr)), scale)
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if h < 1 or w < 1:
        raise EvalError(f"{sample.hr}: image {hr.shape[1]}x{hr.shape[0]} is smaller than x{scale}")
    if sample.lr is None:
        # Output shape given explicitly so that MATLAB's ceil(scale * n) cannot round up.
        return imresize(hr, 1 / scale, output_shape=(h, w)), hr
    lr = image_io.to_rgb_uint8(image_io.load_image(sample.lr))
    if lr.shape[:2] != (h, w):
        raise EvalError(
            f"{sample.lr}: LR is {lr.shape[1]}x{lr.shape[0]}, but its HR {sample.hr.name} "
            f"mod-cropped to x{scale} needs {w}x{h}"
        )
    return lr, hr


def bicubic_upscaler(scale: int) -> Callable[[np.ndarray], np.ndarray]:
    """MATLAB bicubic upscaling, uint8 LR [h, w, 3] -> uint8 [s*h, s*w, 3]."""

    def upscale(lr: np.ndarray) -> np.ndarray:
        return imresize(lr, scale, output_shape=(scale * lr.shape[0], scale * lr.shape[1]))

    return upscale


def model_upscaler(
    checkpoint: str,
    scale: int,
    *,
    tile: int | None,
    overlap: int | None = None,
    self_ensemble: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """The checkpoint's model as uint8 LR [h, w, 3] -> quantised uint8 [s*h, s*w, 3]."""
    # Imported here so that --bicubic runs without loading JAX and Orbax.
    from maffsrn_jax import convert, inference, runtimes

    if runtimes.is_artifact(checkpoint):
        return artifact_upscaler(checkpoint, scale, tile=tile, overlap=overlap,
                                 self_ensemble=self_ensemble)
    if overlap is None:
        overlap = inference.DEFAULT_OVERLAP
    if tile is not None:
        try:
            inference.check_tiling(tile, overlap)
        except ValueError as e:
            raise EvalError(f"--tile {tile} --overlap {overlap}: {e}") from None
    try:
        model, variables = convert.load_pretrained(checkpoint)
    except convert.CheckpointError as e:
        raise EvalError(str(e)) from None
    if model.scale != scale:
        raise EvalError(
            f"{checkpoint}: checkpoint is a x{model.scale} model, but --scale is {scale}"
        )

    def upscale(lr: np.ndarray) -> np.ndarray:
        sr = inference.upscale_array(model, variables, lr.astype(np.float32) / 255, tile=tile,
                                     overlap=overlap, self_ensemble=self_ensemble)
        return metrics.quantize(sr)

    return upscale


def artifact_upscaler(
    path: str,
    scale: int,
    *,
    tile: int | None,
    overlap: int | None = None,
    self_ensemble: bool = False,
) -> Callable[[np.ndarray], np.ndarray]:
    """An exported model (`maffsrn_jax.export`) in its own runtime, as `model_upscaler`.

    A TFLite model always runs in tiles of its fixed input size.
    """
    from maffsrn_jax import inference, runtimes

    try:
        artifact = runtimes.open_artifact(path)
        fn = runtimes.upscale_fn(artifact, tile=tile, overlap=overlap)
    except ImportError as e:
        raise EvalError(f"{path}: its runtime is not installed ({e.name or e})") from None
    except ValueError as e:
        raise EvalError(f"--checkpoint {path}: {e}") from None
    if artifact.scale != scale:
        raise EvalError(f"{path}: exported model is x{artifact.scale}, but --scale is {scale}")

    def upscale(lr: np.ndarray) -> np.ndarray:
        x = lr.astype(np.float32) / 255
        sr = inference.ensemble_x8(fn, x) if self_ensemble else fn(x)
        return metrics.quantize(sr)

    return upscale


def evaluate(
    upscale: Callable[[np.ndarray], np.ndarray],
    samples: list[Sample],
    scale: int,
    *,
    desc: str = "",
    save_dir: Path | None = None,
) -> list[dict]:
    """Per-image {"name", "psnr", "ssim"} of `upscale` on `samples`, in order."""
    results = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=None, leave=False):
        lr, hr = load_pair(sample, scale)
        sr = upscale(lr)
        if save_dir is not None:
            image_io.save_image(save_dir / f"{sample.name}.png", sr)
        results.append({
            "name": sample.name,
            "psnr": metrics.psnr(sr, hr, scale=scale),
            "ssim": metrics.ssim(sr, hr, scale=scale),
        })
    return results


def format_table(name: str, scale: int, results: list[dict]) -> str:
    width = max(len("mean"), *(len(r["name"]) for r in results))
    lines = [f"{name} x{scale}", f"  {'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}"]
    for r in results:
        lines.append(f"  {r['name']:<{width}}  {r['psnr']:7.3f}  {r['ssim']:6.4f}")
    psnr, ssim = _mean(results, "psnr"), _mean(results, "ssim")
    lines.append(f"  {'mean':<{width}}  {psnr:7.3f}  {ssim:6.4f}")
    return "\n".join(lines)


def _mean(results: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in results]))


def write_json_atomic(path: Path, obj: object) -> None:
    """Writes `obj` as JSON via a temporary file beside `path`, so `path` is never partial."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open with 0o666 lets the umask decide permissions, as a plain open() would.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    source.add_argument("--checkpoint", help="Orbax directory, .pt/.pth or .safetensors, or "
                        "an exported .onnx/.tflite/.stablehlo (maffsrn_jax.export)")
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
            "psnr": _mean(results, "psnr"),
            "ssim": _mean(results, "ssim"),
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
    try:
        run(args)
    except (EvalError, image_io.ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. --save-images in a read-only place.
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
