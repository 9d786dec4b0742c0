"""Exports a MAFFSRN checkpoint to StableHLO, ONNX or TFLite for serving without this package.

    maffsrn-export --checkpoint maffsrn_x4 --format stablehlo --output model.stablehlo
    maffsrn-export --checkpoint CKPT --format onnx --output model.onnx
    maffsrn-export --checkpoint CKPT --format tflite --output model.tflite --input-size 64x64
    maffsrn-export --checkpoint CKPT --format onnx --precision int8 \\
        --calibration lr_images/ --output model_int8.onnx

CKPT is a training run's folder, a .pt/.pth or .safetensors file, or a shipped name
(maffsrn_x4). StableHLO needs nothing more than the base install; ONNX and TFLite need the
export extra (pip install 'maffsrn-jax[export]').

What each format takes (all float32 RGB in [0, 1], H, W >= 13, output unclipped):
- stablehlo: `jax.export` bytes, NHWC [N, H, W, 3] -> [N, sH, sW, 3], N, H, W symbolic, for
  CPU and CUDA. Load with `jax.export.deserialize(blob).call(x)`; nothing of this package is
  needed. --precision float16 computes in float16 (float32 parameters and I/O).
- onnx: input `lr` NCHW [N, 3, H, W], output `sr` [N, 3, sH, sW], N, H, W dynamic; the scale
  is in the model's metadata (`scale`). Exported from the PyTorch twin of the model
  (`maffsrn_jax.torch_model`), which computes the same function with the same weights.
- tflite: NHWC [1, H, W, 3] at --input-size (default 64x64) -> [1, sH, sW, 3], for LiteRT and
  its GPU delegate (no tensor above rank 4). `eval.py` and the upscaler tile larger images.
float16 and int8 keep float32 inputs and outputs; int8 (static, per-channel) needs
--calibration, a folder of LR images like the ones the model will see.

The file is written atomically; the command prints it, its size and the largest difference
to the Flax model on a check image. Exit codes: 0 ok, 2 bad input (one `error:` line).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maffsrn_jax import image_io
from maffsrn_jax.cli import prog_name
from maffsrn_jax.errors import Error, parse_size, run_cli
from maffsrn_jax.extras import require
from maffsrn_jax.files import list_images, write_atomic
from maffsrn_jax.models import MAFFSRN, MIN_INPUT_SIZE

FORMATS = ("stablehlo", "onnx", "tflite")
PRECISIONS = ("float32", "float16", "int8")
DEFAULT_INPUT_SIZE = (64, 64)
# Calibration crops: at most this many images, each cut to at most this many pixels a side
# (the centre), so int8 calibration takes seconds; a few dozen crops fix the ranges.
CALIBRATION_IMAGES = 64
CALIBRATION_CROP = 128
# int8 calibration: a folder of LR images, or the crops `calibration_images` read from one.
Calibration = str | os.PathLike | Sequence[np.ndarray] | None
# ONNX operator set: 17 has every op the model needs and runs in any recent ONNX Runtime.
ONNX_OPSET = 17
# The optional packages each format needs to be written and checked (the `export` extra).
_NEEDS = {"stablehlo": (), "onnx": ("torch", "onnx", "onnxruntime"),
          "tflite": ("tensorflow", "ai_edge_litert")}


class ExportError(Error):
    """Bad arguments or an unusable checkpoint/calibration set; the message names it."""


def _require(fmt: str) -> None:
    """A MissingExtraError naming the export extra if a package `fmt` needs is missing."""
    for module in _NEEDS[fmt]:
        require(module, "export", f"{fmt} export")


def _check_precision(precision: str, fmt: str, calibration: Calibration = None) -> None:
    if precision not in PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if fmt == "stablehlo" and precision == "int8":
        raise ExportError("--precision int8 is for onnx and tflite (stablehlo: float32, float16)")
    if precision == "int8" and calibration is None:
        raise ExportError("--precision int8 needs --calibration DIR (a folder of LR images)")


def _calibration(calibration: Calibration) -> list[np.ndarray]:
    """The calibration crops: read from a folder, or as `calibration_images` gave them."""
    if isinstance(calibration, (str, os.PathLike)):
        return calibration_images(calibration)
    return list(calibration or [])


def _write_bytes(path: str | os.PathLike, blob: bytes) -> None:
    """Writes `blob` atomically (never a partial file), or raises ExportError."""
    p = Path(path)
    try:
        write_atomic(p, blob)
    except OSError as e:
        raise ExportError(f"--output {p}: cannot write ({e.strerror or e})") from None


def calibration_images(directory: str | os.PathLike) -> list[np.ndarray]:
    """Float32 RGB [h, w, 3] in [0, 1] crops of the LR images in `directory` (see above)."""
    d = Path(directory)
    if not d.is_dir():
        raise ExportError(f"--calibration {d}: no such directory")
    files = list_images(d)[:CALIBRATION_IMAGES]
    images = []
    for f in files:
        x = image_io.to_rgb_uint8(image_io.load_image(f))
        h, w = x.shape[:2]
        if min(h, w) < MIN_INPUT_SIZE:
            continue
        ch, cw = min(h, CALIBRATION_CROP), min(w, CALIBRATION_CROP)
        top, left = (h - ch) // 2, (w - cw) // 2
        images.append(x[top : top + ch, left : left + cw].astype(np.float32) / 255)
    if not images:
        raise ExportError(
            f"--calibration {d}: no image of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} in it"
        )
    return images


# ---------------------------------------------------------------------------------- StableHLO


def stablehlo_bytes(model: MAFFSRN, variables: Mapping[str, Any], *,
                    precision: str = "float32") -> bytes:
    """Serialized `jax.export` of the model: NHWC float32, batch/height/width symbolic."""
    import jax
    import jax.numpy as jnp
    from jax import export as jax_export

    _check_precision(precision, "stablehlo")
    dtype = jnp.float16 if precision == "float16" else jnp.float32
    # The portable form traces with symbolic sizes; the CPU fast paths bake sizes in.
    portable = model.clone(portable=True, dtype=dtype)
    params = {"params": variables["params"]}
    b, h, w = jax_export.symbolic_shape(
        "b, h, w", constraints=[f"h >= {MIN_INPUT_SIZE}", f"w >= {MIN_INPUT_SIZE}"]
    )
    spec = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32)
    exported = jax_export.export(
        jax.jit(lambda x: portable.apply(params, x)), platforms=("cpu", "cuda")
    )(spec)
    return bytes(exported.serialize())


def export_stablehlo(model: MAFFSRN, variables: Mapping[str, Any], path: str | os.PathLike,
                     *, precision: str = "float32") -> None:
    """Writes `stablehlo_bytes(model, variables)` to `path` atomically."""
    _write_bytes(path, stablehlo_bytes(model, variables, precision=precision))


# ---------------------------------------------------------------------------------------- ONNX


def _torch_twin(model: MAFFSRN, variables: Mapping[str, Any]):
    """The PyTorch reference model (`torch_model.MAFFSRN`) holding the same weights."""
    import torch

    from maffsrn_jax import convert, torch_model

    net = torch_model.MAFFSRN(**convert.model_config(model)).eval()
    state = convert.flax_to_torch(model, {"params": variables["params"]})
    net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    # Weight norm folded into plain convolutions: the exported graph then holds the weights
    # as constants instead of recomputing g * v / ||v|| on every run (which also keeps the
    # float16 and int8 rewrites working on plain Conv weights).
    with torch.no_grad():
        for parent in list(net.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch_model.WNConv2d):
                    weight = child.weight_g * child.weight_v / child.weight_v.flatten(1).norm(
                        dim=1).view(-1, 1, 1, 1)
                    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2],
                                           padding=child.padding)
                    conv.weight.copy_(weight)
                    conv.bias.copy_(child.bias)
                    setattr(parent, name, conv)
    return net.eval()


def _onnx_float32(model: MAFFSRN, variables: Mapping[str, Any], path: Path) -> None:
    import torch

    net = _torch_twin(model, variables)
    # The TorchScript exporter (dynamo=False) traces shape arithmetic into the graph, so the
    # ESA's nearest resize follows the dynamic input size; the example size is arbitrary.
    with torch.no_grad(), warnings.catch_warnings():
        # It warns that dynamo is the default now; the choice above is deliberate.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
            input_names=["lr"], output_names=["sr"], opset_version=ONNX_OPSET,
            dynamic_axes={"lr": {0: "n", 2: "h", 3: "w"}, "sr": {0: "n", 2: "sh", 3: "sw"}},
        )


def _onnx_float16(proto):
    """Half-precision weights and activations; inputs and outputs stay float32.

    No op is kept in float32: on ONNX Runtime's CPU provider, keeping `Resize` (the bicubic
    skip and the ESA upsampling) or the skip and the final sum in float32 gave larger errors
    (max |diff| 4.5e-4 and 1.0e-3 against 9.6e-5 on Set5's butterfly, quickstart x2 model),
    as the casts around such islands round their inputs and outputs to half.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True, op_block_list=[])


class _CalibrationReader:
    """onnxruntime.quantization's data reader over `calibration_images`."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self._items: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._items, None)
        return None if x is None else {"lr": x.transpose(2, 0, 1)[None].copy()}


def _onnx_int8(src: Path, dst: Path, calibration: Calibration) -> None:
    """Static int8 QDQ: per-channel int8 conv weights, uint8 activations calibrated on the
    calibration images; everything but the convolutions stays float32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    reader = _CalibrationReader(_calibration(calibration))
    quantize_static(
        str(src), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
        op_types_to_quantize=["Conv"], activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def onnx_bytes(model: MAFFSRN, variables: Mapping[str, Any], *, precision: str = "float32",
               calibration: Calibration = None) -> bytes:
    """The serialized ONNX model (see the module docstring), with `scale` in its metadata."""
    import onnx

    _check_precision(precision, "onnx", calibration)
    _require("onnx")
    with tempfile.TemporaryDirectory(prefix="maffsrn-onnx-") as tmp:
        f32 = Path(tmp) / "float32.onnx"
        _onnx_float32(model, variables, f32)
        if precision == "int8":
            _onnx_int8(f32, Path(tmp) / "int8.onnx", calibration)
            proto = onnx.load(Path(tmp) / "int8.onnx")
        else:
            proto = onnx.load(f32)
            if precision == "float16":
                proto = _onnx_float16(proto)
    meta = {"scale": str(model.scale), "min_input_size": str(MIN_INPUT_SIZE),
            "precision": precision, "layout": "NCHW RGB [0, 1]"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def export_onnx(model: MAFFSRN, variables: Mapping[str, Any], path: str | os.PathLike, *,
                precision: str = "float32", calibration: Calibration = None) -> None:
    """Writes the ONNX model atomically. `variables` is {'params': ...}; `calibration` (a
    folder of LR images, or `calibration_images` of one) is required for precision='int8'."""
    _write_bytes(path, onnx_bytes(model, variables, precision=precision,
                                  calibration=calibration))


# -------------------------------------------------------------------------------------- TFLite


def parse_input_size(text: str) -> tuple[int, int]:
    """'HxW' -> (H, W), each at least MIN_INPUT_SIZE."""
    size = parse_size(text, "--input-size")
    if min(size) < MIN_INPUT_SIZE:
        raise ExportError(
            f"--input-size {text}: each side must be at least {MIN_INPUT_SIZE} "
            "(the model's minimum)"
        )
    return size


def _fit(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre crop / edge pad of [h, w, 3] to exactly `size`."""
    out = x
    for axis, n in enumerate(size):
        have = out.shape[axis]
        if have > n:
            out = np.take(out, np.arange((have - n) // 2, (have - n) // 2 + n), axis=axis)
        elif have < n:
            pad = [(0, 0)] * 3
            pad[axis] = ((n - have) // 2, n - have - (n - have) // 2)
            out = np.pad(out, pad, mode="edge")
    return out


def tflite_bytes(model: MAFFSRN, variables: Mapping[str, Any], *, precision: str = "float32",
                 calibration: Calibration = None,
                 input_size: tuple[int, int] = DEFAULT_INPUT_SIZE) -> bytes:
    """The TFLite flatbuffer: NHWC [1, H, W, 3] float32 at `input_size` (see the docstring).

    Built by jax2tf (StableHLO inside a TF function) and the TFLite converter, which lowers
    StableHLO to TFLite builtins. Sizes are static because the converter needs them so.
    """
    _check_precision(precision, "tflite", calibration)
    _require("tflite")
    images = _calibration(calibration) if precision == "int8" else []
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax.numpy as jnp
    import tensorflow as tf
    from jax.experimental import jax2tf

    portable = model.clone(portable=True, dtype=jnp.float32)
    params = {"params": variables["params"]}
    h, w = input_size
    fn = jax2tf.convert(lambda x: portable.apply(params, x), with_gradient=False)
    module = tf.Module()
    module.f = tf.function(fn, input_signature=[tf.TensorSpec([1, h, w, 3], tf.float32)],
                           autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module
    )
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        # Full-integer kernels where TFLite has them (per-channel conv weights), float
        # fallback elsewhere; inputs and outputs stay float32.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [_fit(x, input_size)[None].astype(np.float32)] for x in images
        )
    return bytes(converter.convert())


def export_tflite(model: MAFFSRN, variables: Mapping[str, Any], path: str | os.PathLike, *,
                  precision: str = "float32", calibration: Calibration = None,
                  input_size: tuple[int, int] = DEFAULT_INPUT_SIZE) -> None:
    """Writes the TFLite model atomically."""
    _write_bytes(path, tflite_bytes(model, variables, precision=precision,
                                    calibration=calibration, input_size=input_size))


# ------------------------------------------------------------------------------------- command


def check_image(size: tuple[int, int] = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """A deterministic float32 [H, W, 3] test picture: smooth gradients plus edges and texture,
    so every branch of the model (ESA context, CEA, bicubic skip) sees varied input."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    g = (xx + yy) / (h + w)
    b = ((xx // 8 + yy // 8) % 2) * 0.6 + 0.2
    noise = np.random.default_rng(0).uniform(-0.05, 0.05, (h, w, 3)).astype(np.float32)
    return np.clip(np.stack([r, g, b], axis=-1) + noise, 0, 1).astype(np.float32)


def _check_output(path: Path) -> None:
    """Fails early (before the slow export) on an output that can never be written."""
    if path.is_dir():
        raise ExportError(f"--output {path}: is a directory")
    if not path.parent.is_dir():
        raise ExportError(f"--output {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ExportError(f"--output {path}: directory {path.parent} is not writable")


def export(checkpoint: str, fmt: str, output: str | os.PathLike, *, precision: str = "float32",
           calibration: Calibration = None,
           input_size: tuple[int, int] = DEFAULT_INPUT_SIZE) -> float:
    """Loads `checkpoint`, writes the artifact, and returns its largest absolute difference
    to the Flax model on `check_image` (run through the artifact's own runtime)."""
    from maffsrn_jax import convert, inference, runtimes

    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    _check_precision(precision, fmt, calibration)
    _require(fmt)
    out = Path(output)
    _check_output(out)
    if out.suffix.lower() != runtimes.SUFFIXES[fmt]:
        raise ExportError(f"--output {out}: a {fmt} file must end in {runtimes.SUFFIXES[fmt]}")
    # Read now, so that a bad folder is reported before the slow export, and only once.
    images = None if calibration is None else calibration_images(calibration)
    try:
        model, variables = convert.load_pretrained(checkpoint)
    except convert.CheckpointError as e:
        raise ExportError(str(e)) from None
    if fmt == "stablehlo":
        export_stablehlo(model, variables, out, precision=precision)
    elif fmt == "onnx":
        export_onnx(model, variables, out, precision=precision, calibration=images)
    else:
        export_tflite(model, variables, out, precision=precision, calibration=images,
                      input_size=input_size)
    x = check_image(input_size if fmt == "tflite" else DEFAULT_INPUT_SIZE)
    want = inference.model_fn(model, variables)(x)
    got = runtimes.open_artifact(out).run(x[None])[0]
    return float(np.abs(got - want).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("maffsrn_jax.export", argv),
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="a run folder, .pt/.pth, .safetensors or a shipped name")
    parser.add_argument("--format", required=True, help=" | ".join(FORMATS))
    parser.add_argument("--output", required=True, help="the file to write")
    parser.add_argument("--precision", default="float32", help=" | ".join(PRECISIONS))
    parser.add_argument("--calibration", metavar="DIR", help="LR images (needed for int8)")
    parser.add_argument("--input-size", default="64x64", metavar="HxW",
                        help="TFLite's fixed input size (default: %(default)s)")
    args = parser.parse_args(argv)

    def body() -> None:
        size = parse_input_size(args.input_size)
        diff = export(args.checkpoint, args.format, args.output, precision=args.precision,
                      calibration=args.calibration, input_size=size)
        size_bytes = Path(args.output).stat().st_size
        print(f"wrote {args.output} ({size_bytes:,} bytes, {args.format} {args.precision}); "
              f"max |diff| to the Flax model on the check image: {diff:.3g}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
