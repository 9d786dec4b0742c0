"""Runs exported models (`maffsrn_jax.export`) in their own runtimes, for eval.py and upscale.

    artifact = open_artifact("model.onnx")        # .stablehlo, .onnx or .tflite
    sr = artifact.run(lr_batch)                   # [N, H, W, 3] -> [N, sH, sW, 3] float32
    fn = upscale_fn(artifact)                     # one image of any size, as inference.UpscaleFn

The scale comes from the artifact itself (ONNX metadata, the StableHLO output shape, the
TFLite output shape), never from the file name. `run` is the artifact as exported: it refuses
inputs under the model's minimum and, for TFLite, any size but the one it was exported at.
`upscale_fn` accepts any image: small ones are edge-padded (as `inference.model_fn` pads), and
a TFLite model runs through `inference.upscale_tiled` with its fixed size as the tile.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maffsrn_jax import inference
from maffsrn_jax.errors import Error
from maffsrn_jax.extras import MissingExtraError, require
from maffsrn_jax.models import MIN_INPUT_SIZE

SUFFIXES = {"stablehlo": ".stablehlo", "onnx": ".onnx", "tflite": ".tflite"}


def is_artifact(path: str | os.PathLike) -> bool:
    """Whether `path` names an exported model (by suffix) rather than a checkpoint."""
    return Path(path).suffix.lower() in SUFFIXES.values()


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An opened exported model.

    `input_size` is the fixed (H, W) of a TFLite model, None where sizes are dynamic.
    """

    path: Path
    format: str
    scale: int
    input_size: tuple[int, int] | None
    _run: Callable[[np.ndarray], np.ndarray]

    def run(self, x: np.ndarray) -> np.ndarray:
        """[N, H, W, 3] float RGB in [0, 1] -> [N, sH, sW, 3] float32 (unclipped)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"{self.path.name}: expected NHWC RGB input [N, H, W, 3], "
                             f"got shape {x.shape}")
        h, w = x.shape[1:3]
        if min(h, w) < MIN_INPUT_SIZE:
            raise ValueError(
                f"{self.path.name}: input {h}x{w} is smaller than {MIN_INPUT_SIZE}x"
                f"{MIN_INPUT_SIZE}, the least the model accepts; pad it first"
            )
        if self.input_size is not None and (h, w) != self.input_size:
            eh, ew = self.input_size
            raise ValueError(
                f"{self.path.name}: this TFLite model takes {eh}x{ew} inputs only (its "
                f"--input-size), got {h}x{w}; tile or pad the image (the upscaler does)"
            )
        return np.asarray(self._run(x), dtype=np.float32)


def _open_stablehlo(path: Path) -> Artifact:
    import jax
    from jax import export

    exported = export.deserialize(bytearray(path.read_bytes()))
    probe = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), np.float32)
    out = jax.eval_shape(exported.call, probe)
    scale = out.shape[1] // MIN_INPUT_SIZE
    call = jax.jit(exported.call)
    return Artifact(path, "stablehlo", scale, None, lambda x: np.asarray(call(x)))


def _open_onnx(path: Path) -> Artifact:
    ort = require("onnxruntime", "export", f"{path}: running an ONNX model")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "scale" not in meta:
        raise ValueError(f"{path}: not a maffsrn_jax export (no 'scale' in its metadata)")

    def run(x: np.ndarray) -> np.ndarray:
        (y,) = session.run(["sr"], {"lr": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
        return y.transpose(0, 2, 3, 1)

    return Artifact(path, "onnx", int(meta["scale"]), None, run)


def _open_tflite(path: Path) -> Artifact:
    require("ai_edge_litert", "export", f"{path}: running a TFLite model")
    from ai_edge_litert.interpreter import Interpreter

    # Every core, as ONNX Runtime and XLA use by default (LiteRT's own default is one thread).
    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count() or 1)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    h, w = (int(d) for d in inp["shape"][1:3])
    scale = int(out["shape"][1]) // h

    def run(x: np.ndarray) -> np.ndarray:
        ys = []
        for image in x:  # the interpreter's batch is fixed at 1
            interpreter.set_tensor(inp["index"], np.ascontiguousarray(image[None]))
            interpreter.invoke()
            ys.append(interpreter.get_tensor(out["index"])[0].copy())
        return np.stack(ys)

    return Artifact(path, "tflite", scale, (h, w), run)


def open_artifact(path: str | os.PathLike) -> Artifact:
    """Opens a .stablehlo, .onnx or .tflite file written by `maffsrn_jax.export`.

    Raises ValueError for a missing file or another suffix; a runtime that is not installed
    raises ImportError naming the package.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    opener = {".stablehlo": _open_stablehlo, ".onnx": _open_onnx, ".tflite": _open_tflite}
    suffix = p.suffix.lower()
    if suffix not in opener:
        raise ValueError(f"{p}: not an exported model (.stablehlo, .onnx or .tflite)")
    return opener[suffix](p)


class ArtifactError(Error):
    """An exported model that cannot be opened here; the message names the file."""


def load_upscaler(
    path: str, *, tile: int | None = None, overlap: int | None = None,
    self_ensemble: bool = False,
) -> tuple[inference.UpscaleFn, int]:
    """(`upscale_fn` of the artifact at `path`, its scale), for the commands that take an
    exported model as --checkpoint; `self_ensemble` averages the 8 flips/transposes."""
    try:
        artifact = open_artifact(path)
        fn = upscale_fn(artifact, tile=tile, overlap=overlap)
    except ImportError as e:
        raise ArtifactError(f"{path}: its runtime is not installed ({e.name or e})") from None
    except MissingExtraError:
        raise
    except ValueError as e:
        raise ArtifactError(f"--checkpoint {path}: {e}") from None
    if self_ensemble:
        fn = functools.partial(inference.ensemble_x8, fn)
    return fn, artifact.scale


def upscale_fn(
    artifact: Artifact, *, tile: int | None = None, overlap: int | None = None
) -> inference.UpscaleFn:
    """The artifact as an `inference.UpscaleFn` on one float image [H, W, 3] of any size.

    TFLite runs in tiles of its fixed input size (overlap: a quarter of the tile unless a
    smaller one is given); the others run whole images, or `tile` x `tile` tiles when `tile` is set.
    """
    if artifact.input_size is not None:
        tile = min(artifact.input_size)
        fn = inference.padded_fn(artifact.run, artifact.scale, artifact.input_size)
        # The upscaler's default overlap is sized for its larger default tile.
        overlap = tile // 4 if overlap is None or overlap >= tile // 2 else overlap
    else:
        fn = inference.padded_fn(artifact.run, artifact.scale, (MIN_INPUT_SIZE, MIN_INPUT_SIZE))
        overlap = inference.DEFAULT_OVERLAP if overlap is None else overlap
    if tile is None:
        return fn
    inference.check_tiling(tile, overlap)
    return functools.partial(inference.upscale_tiled, fn, scale=artifact.scale, tile=tile,
                             overlap=overlap)
