"""Scoring super-resolution as the published tables do, for eval.py and training's validation.

Conventions (`maffsrn_jax.metrics`): the SR output is quantised to uint8, then PSNR and SSIM
are computed on MATLAB's rounded Y channel with `scale` pixels shaved from each border. A
dataset DIR is either
- the EDSR benchmark layout, `DIR/HR/<name>.png` with `DIR/LR_bicubic/X{s}/<name>x{s}.png`, or
- a folder of HR images only (DIR itself, or DIR/HR without an LR_bicubic/ folder), whose LR
  images are made here: HR mod-cropped to a multiple of the scale, then MATLAB-bicubic
  downscaled (`imresize`), as the literature makes them.
An upscaler is any function uint8 LR [h, w, 3] -> uint8 SR [s*h, s*w, 3]: MATLAB bicubic (the
baseline row of every table), a model, or an exported artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from maffsrn_jax import image_io, metrics
from maffsrn_jax.data.sources import PairFiles, benchmark_files, folder_files
from maffsrn_jax.errors import Error
from maffsrn_jax.imresize import imresize, modcrop

Upscaler = Callable[[np.ndarray], np.ndarray]

# One benchmark image: its name, the HR file and, in the EDSR layout, the LR file.
Sample = PairFiles


class EvalError(Error):
    """Bad command-line input or dataset; the message names the flag, folder or file."""


def find_samples(directory: Path, scale: int) -> list[Sample]:
    """Detects the dataset layout of `directory` (see the module docstring) and lists it."""
    if not directory.is_dir():
        raise EvalError(f"{directory}: no such directory")
    hr_dir, lr_root = directory / "HR", directory / "LR_bicubic"
    problems: list[str] = []
    if hr_dir.is_dir() and lr_root.is_dir():
        if not (lr_root / f"X{scale}").is_dir():
            raise EvalError(f"{directory}: EDSR benchmark layout without LR_bicubic/X{scale}/")
        samples = benchmark_files(directory, scale, problems)
    else:
        samples = folder_files(hr_dir if hr_dir.is_dir() else directory, problems)
    if not samples:
        raise EvalError(
            f"{directory}: unknown dataset layout: no images in it, nor HR/ + LR_bicubic/X{scale}/"
        )
    if problems:
        raise EvalError("; ".join(problems))
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


def bicubic_upscaler(scale: int) -> Upscaler:
    """MATLAB bicubic upscaling, uint8 LR [h, w, 3] -> uint8 [s*h, s*w, 3]."""

    def upscale(lr: np.ndarray) -> np.ndarray:
        return imresize(lr, scale, output_shape=(scale * lr.shape[0], scale * lr.shape[1]))

    return upscale


def array_upscaler(
    model: Any,
    variables: Any,
    *,
    tile: int | None = None,
    overlap: int | None = None,
    self_ensemble: bool = False,
) -> Upscaler:
    """`model` as uint8 LR [h, w, 3] -> quantised uint8 [s*h, s*w, 3] (tiled if `tile`)."""
    # Imported here so that bicubic scoring runs without loading JAX.
    from maffsrn_jax import inference

    if overlap is None:
        overlap = inference.DEFAULT_OVERLAP
    if tile is not None:
        try:
            inference.check_tiling(tile, overlap)
        except ValueError as e:
            raise EvalError(f"--tile {tile} --overlap {overlap}: {e}") from None

    def upscale(lr: np.ndarray) -> np.ndarray:
        sr = inference.upscale_array(model, variables, lr.astype(np.float32) / 255, tile=tile,
                                     overlap=overlap, self_ensemble=self_ensemble)
        return metrics.quantize(sr)

    return upscale


def load_upscaler(
    checkpoint: str,
    scale: int | None = None,
    *,
    tile: int | None,
    overlap: int | None = None,
    self_ensemble: bool = False,
) -> tuple[Upscaler, int]:
    """(`array_upscaler` of a checkpoint, its scale); an exported model (`.stablehlo`,
    `.onnx`, `.tflite`) runs in its own runtime. `checkpoint` is anything `load_pretrained`
    reads, a shipped name included. A `scale` that the model does not have is an EvalError.
    """
    from maffsrn_jax import convert, runtimes

    if runtimes.is_artifact(checkpoint):
        fn, model_scale = runtimes.load_upscaler(checkpoint, tile=tile, overlap=overlap,
                                                 self_ensemble=self_ensemble)
        if scale is not None and model_scale != scale:
            raise EvalError(
                f"{checkpoint}: exported model is x{model_scale}, but --scale is {scale}"
            )
        return lambda lr: metrics.quantize(fn(lr.astype(np.float32) / 255)), model_scale
    try:
        model, variables = convert.load_pretrained(checkpoint)
    except convert.CheckpointError as e:
        raise EvalError(str(e)) from None
    if scale is not None and model.scale != scale:
        raise EvalError(
            f"{checkpoint}: checkpoint is a x{model.scale} model, but --scale is {scale}"
        )
    upscale = array_upscaler(model, variables, tile=tile, overlap=overlap,
                             self_ensemble=self_ensemble)
    return upscale, model.scale


def model_upscaler(
    checkpoint: str,
    scale: int,
    *,
    tile: int | None,
    overlap: int | None = None,
    self_ensemble: bool = False,
) -> Upscaler:
    """`load_upscaler`'s upscaler of a checkpoint that must be a x`scale` model."""
    return load_upscaler(checkpoint, scale, tile=tile, overlap=overlap,
                         self_ensemble=self_ensemble)[0]


def artifact_upscaler(
    path: str,
    scale: int,
    *,
    tile: int | None,
    overlap: int | None = None,
    self_ensemble: bool = False,
) -> Upscaler:
    """An exported model (`maffsrn_jax.export`) in its own runtime, as `model_upscaler`.

    A TFLite model always runs in tiles of its fixed input size.
    """
    from maffsrn_jax import runtimes

    if not runtimes.is_artifact(path):
        raise EvalError(f"{path}: not an exported model ({', '.join(runtimes.SUFFIXES.values())})")
    return model_upscaler(path, scale, tile=tile, overlap=overlap, self_ensemble=self_ensemble)


def score(sr: np.ndarray, hr: np.ndarray, scale: int) -> dict[str, float]:
    """{"psnr", "ssim"} of a uint8 SR image against its HR, the tables' way."""
    return {"psnr": metrics.psnr(sr, hr, scale=scale), "ssim": metrics.ssim(sr, hr, scale=scale)}


def score_pairs(
    upscale: Upscaler, pairs: Sequence[tuple[np.ndarray, np.ndarray]], scale: int
) -> dict[str, Any]:
    """Scores in-memory (LR, HR) uint8 pairs: {"psnr", "ssim"} means, "per_image" (PSNR,
    SSIM) tuples and the "sr" images, in order."""
    srs = [upscale(lr) for lr, _ in pairs]
    per_image = [tuple(score(sr, hr, scale).values()) for sr, (_, hr) in zip(srs, pairs,
                                                                              strict=True)]
    psnr, ssim = np.mean(per_image, axis=0) if per_image else (float("nan"), float("nan"))
    return {"psnr": float(psnr), "ssim": float(ssim), "per_image": per_image, "sr": srs}


def evaluate(
    upscale: Upscaler,
    samples: list[Sample],
    scale: int,
    *,
    desc: str = "",
    save_dir: Path | None = None,
    failures: list[str] | None = None,
) -> list[dict]:
    """Per-image {"name", "psnr", "ssim"} of `upscale` on `samples`, in order.

    A sample that cannot be read (or whose LR does not fit its HR) raises an `Error`, or, with
    a `failures` list, is appended to it as one line naming the file and skipped.
    """
    results = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=None, leave=False):
        try:
            lr, hr = load_pair(sample, scale)
        except Error as e:
            if failures is None:
                raise
            failures.append(str(e))
            continue
        sr = upscale(lr)
        if save_dir is not None:
            image_io.save_image(save_dir / f"{sample.name}.png", sr)
        results.append({"name": sample.name, **score(sr, hr, scale)})
    return results


def mean(results: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in results]))


def format_table(name: str, scale: int, results: list[dict]) -> str:
    width = max(len("mean"), *(len(r["name"]) for r in results))
    lines = [f"{name} x{scale}", f"  {'image':<{width}}  {'PSNR':>7}  {'SSIM':>6}"]
    for r in results:
        lines.append(f"  {r['name']:<{width}}  {r['psnr']:7.3f}  {r['ssim']:6.4f}")
    lines.append(f"  {'mean':<{width}}  {mean(results, 'psnr'):7.3f}  {mean(results, 'ssim'):6.4f}")
    return "\n".join(lines)
