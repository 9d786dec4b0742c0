"""Size, cost, memory and speed of MAFFSRN as XLA compiles it: the paper's efficiency numbers.

    python -m maffsrn_jax.profile --scale 4 --input-size 256x256           # AIM 2020 setting
    python -m maffsrn_jax.profile --scale 2 --output-size 720x1280         # 720p HR output
    python -m maffsrn_jax.profile --config configs/maffsrn_l_x4.py --output-size 720x1280
    python -m maffsrn_jax.profile --checkpoint model.pt --train --json out.json
    python -m maffsrn_jax.profile --scale 4 --trace /tmp/trace --dump-hlo /tmp/hlo
    python -m maffsrn_jax.profile --scale 4 --xla-defaults     # without the package's options

Reports (and writes with `--json`):
  params             parameter scalars (weight-norm gain and direction both count, as PyTorch)
  macs               convolution multiply-adds of one forward pass over the whole batch,
                     counted per Conv layer of the architecture (see `conv_macs`)
  flops, bytes_accessed   XLA's cost analysis of the compiled program (forward, or the
                     whole train step with `--train`)
  peak_memory_bytes  XLA's memory analysis: arguments + outputs + temporaries (buffers that an
                     output aliases, i.e. the donated train state, counted once)
  compile_s          lowering + compilation time
  latency_ms         median wall time of one forward after warm-up (`train_step_ms` with
                     `--train`: one L1 + AdamP step, state donated)
  page_faults_per_run  minor page faults of the process per timed run (getrusage; memory
                     the allocator maps afresh each run faults in again)
  device             the JAX device the program ran on
  malloc_keeps_freed_memory  whether `xla_options.keep_freed_memory` took effect (not with
                     `--malloc-defaults`)

Programs compile with the package's XLA options (`maffsrn_jax.xla_options`: on CPU, XLA's
multi-threaded Eigen kernels instead of YNNPACK's single-threaded ones); `--xla-defaults`
drops them, `--xla-option KEY=VALUE` (repeatable) adds or overrides one. Like every entry
point, the command first makes malloc keep freed memory (`xla_options.keep_freed_memory`);
`--malloc-defaults` leaves glibc's defaults.

Sizes are HxW. `--output-size` gives the HR size; the LR input is HR // scale per side, as the
official counts do (x3 at 720x1280 -> 240x426). Without a size the input is 256x256 (48x48
with `--train`, the paper's training patch); the batch is 1 (16 with `--train`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from maffsrn_jax import train_lib, xla_options
from maffsrn_jax.errors import first_line
from maffsrn_jax.models import MAFFSRN, MIN_INPUT_SIZE, Conv, count_params
from maffsrn_jax.optim import adamp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TRAIN_LEARNING_RATE = 2e-4  # the paper's; the value does not change the cost of a step

__all__ = [
    "ProfileError",
    "conv_macs",
    "param_count",
    "make_train_step",
    "profile_model",
    "parse_xla_options",
    "main",
]


class ProfileError(ValueError):
    """A bad flag, size or model description (reported as one line, exit status 2)."""


# --- counts ---------------------------------------------------------------------------------


def conv_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of every `Conv` layer in one forward pass of an NHWC `input_shape`.

    Counted from the layers, not from the compiled program: each Conv call adds
    out_pixels * k * k * (C_in / groups) * C_out, whatever kernel the layer runs on (the
    depthwise 5x5 runs as shifted multiply-adds, the 1x1s as matmuls). Pooling, resampling,
    activations and the bicubic skip are not convolutions and are not counted; this is the
    convention of the published MAFFSRN numbers (x4 on 256x256: 27.05 G). The layers are
    intercepted while shapes are traced abstractly, so nothing is computed or compiled.
    """
    per_call: list[int] = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        conv = context.module
        if isinstance(conv, Conv) and context.method_name == "__call__":
            x = args[0]
            parts = x if isinstance(x, list | tuple) else [x]
            c_in = sum(p.shape[-1] for p in parts)
            taps = conv.kernel_size**2 * (c_in // conv.groups)
            per_call.append(math.prod(out.shape[:-1]) * taps * conv.features)
        return out

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(count):
        jax.eval_shape(model.init, jax.random.key(0), x)
    return int(sum(per_call))


def param_count(model: nn.Module) -> int:
    """Number of parameter scalars of `model`, from its abstract initialisation."""
    x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
    return count_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"])


# --- the programs ---------------------------------------------------------------------------


def make_train_step(model: MAFFSRN) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
    """(init_state(params) -> state, train_step(state, batch) -> (state, metrics)).

    The project's train step (`train_lib`: L1 loss + AdamP, non-finite steps skipped) on one
    device, with the paper's AdamP settings. The batch is {'lr': uint8 [B, h, w, 3], 'hr':
    uint8 [B, sh, sw, 3]}. The step is not jitted here.
    """
    schedule = optax.constant_schedule(TRAIN_LEARNING_RATE)
    tx = adamp(schedule)
    step = train_lib.make_train_step(model, tx, schedule, axis_name=None)
    return (lambda params: train_lib.create_train_state(params, tx)), step


def random_batch(
    batch_size: int, lr_hw: tuple[int, int], scale: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """A uint8 training batch {'lr': [B, h, w, 3], 'hr': [B, sh, sw, 3]} of noise."""
    rng = np.random.default_rng(seed)
    h, w = lr_hw
    return {
        "lr": rng.integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8),
        "hr": rng.integers(0, 256, (batch_size, h * scale, w * scale, 3), dtype=np.uint8),
    }


def _cost(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _peak_memory(compiled: Any) -> int | None:
    mem = compiled.memory_analysis()
    if mem is None:
        return None
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
    return int(total - getattr(mem, "alias_size_in_bytes", 0))


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (getrusage), or None where unsupported."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_runs(
    run: Callable[[], Any], warmup: int, repeats: int
) -> tuple[list[float], float | None]:
    """(wall seconds of each timed run, minor page faults per timed run or None)."""
    for _ in range(warmup):
        jax.block_until_ready(run())
    times = []
    faults = minor_page_faults()
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    after = minor_page_faults()
    per_run = None if faults is None or after is None else (after - faults) / repeats
    return times, per_run


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def profile_model(
    model: MAFFSRN,
    params: Any | None,
    input_shape: Sequence[int],
    *,
    train: bool = False,
    warmup: int = 2,
    repeats: int = 10,
    trace_dir: str | os.PathLike | None = None,
    hlo_dir: str | os.PathLike | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Profiles inference (or one train step) of `model` on an NHWC `input_shape`.

    `params` None initialises fresh weights (the cost does not depend on their values).
    `repeats` 0 skips the timing (latency reported as None). Returns the report dict of the
    module docstring; `trace_dir` gets a `jax.profiler` trace of `min(repeats, 3)` (at least
    one) further runs, `hlo_dir` the lowered StableHLO and the optimised HLO.
    `compiler_options` are XLA options for this program only (see `parse_xla_options`); None
    means the package's own (`xla_options.compiler_options()`), {} XLA's defaults.
    """
    compiler_options = xla_options.resolve(compiler_options)
    n, h, w, _ = input_shape
    if min(h, w) < MIN_INPUT_SIZE:
        raise ProfileError(f"input {h}x{w} is under the {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} minimum")
    if params is None:
        params = train_lib.init_params(model, jax.random.key(0))
    params = jax.device_put(params)
    report: dict[str, Any] = {
        "model": {
            "scale": model.scale,
            "n_ffgs": model.n_ffgs,
            "dtype": jnp.dtype(model.dtype).name,
        },
        "mode": "train" if train else "inference",
        "input_shape": [n, h, w, 3],
        "params": count_params(params),
        "macs": conv_macs(model, (n, h, w, 3)),
    }

    if train:
        init_state, step = make_train_step(model)
        state = jax.jit(init_state)(params)
        batch = jax.device_put(random_batch(n, (h, w), model.scale))
        jitted = jax.jit(step, donate_argnums=0, compiler_options=compiler_options)
        args: tuple[Any, ...] = (state, batch)
    else:
        x = jax.device_put(np.random.default_rng(0).random((n, h, w, 3), dtype=np.float32))
        jitted = jax.jit(model.apply, compiler_options=compiler_options)
        args = ({"params": params}, x)

    start = time.perf_counter()
    lowered = jitted.lower(*args)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if not compiler_options:
            raise
        raise ProfileError(
            f"XLA rejected the compiler options {compiler_options}: {first_line(e)}"
        ) from e
    report["compile_s"] = round(time.perf_counter() - start, 3)
    cost = _cost(compiled)
    report["flops"] = cost.get("flops")
    report["bytes_accessed"] = cost.get("bytes accessed")
    report["peak_memory_bytes"] = _peak_memory(compiled)
    report["compiler_options"] = dict(compiler_options)

    if hlo_dir is not None:
        stem = "train_step" if train else "forward"
        write_text_atomic(Path(hlo_dir) / f"{stem}.stablehlo.mlir", lowered.as_text())
        write_text_atomic(Path(hlo_dir) / f"{stem}.optimized.hlo.txt", compiled.as_text())

    if train:
        holder = {"state": args[0]}
        batch = args[1]

        def run():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics
    else:

        def run():
            return compiled(*args)

    times, faults = _time_runs(run, warmup, repeats) if repeats > 0 else ([], None)
    latency = round(float(np.median(times)) * 1e3, 3) if times else None
    report["train_step_ms" if train else "latency_ms"] = latency
    report["page_faults_per_run"] = None if faults is None else round(faults)
    if trace_dir is not None:
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            for _ in range(max(1, min(repeats, 3))):
                jax.block_until_ready(run())
    report["device"] = describe_device()
    return report


def describe_device() -> str:
    """'cpu (2 cores)' or e.g. 'gpu: NVIDIA H100 80GB HBM3 (x1)', for reports."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind} (x{jax.device_count()})"


# --- command line ---------------------------------------------------------------------------


def parse_size(text: str, flag: str) -> tuple[int, int]:
    """'HxW' -> (H, W), positive integers."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ProfileError(f"{flag} {text!r}: expected HxW, e.g. 256x256")
    h, w = (int(p) for p in parts)
    if h < 1 or w < 1:
        raise ProfileError(f"{flag} {text!r}: sizes must be positive")
    return h, w


def check_lr_size(size: tuple[int, int], flag: str) -> None:
    """Raises ProfileError naming `flag` unless the LR size (H, W) is one the model takes."""
    h, w = size
    if min(h, w) < MIN_INPUT_SIZE:
        raise ProfileError(
            f"{flag}: LR input {h}x{w} is under the {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} "
            "that the ESA max pool needs"
        )


def parse_xla_options(items: Sequence[str]) -> dict[str, Any]:
    """['KEY=VALUE', ...] -> XLA compiler options for one jitted program.

    They apply to the profiled program only (`jax.jit(..., compiler_options=...)`), unlike
    the process-wide XLA_FLAGS. Integers and true/false are converted; enum values are given
    by name, e.g. xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT.
    """
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ProfileError(f"--xla-option {item!r}: expected KEY=VALUE")
        v: Any = value
        if value.lower() in ("true", "false"):
            v = value.lower() == "true"
        elif value.lstrip("-").isdigit():
            v = int(value)
        options[key.strip()] = v
    return options


def load_config_model(path: str) -> dict[str, Any]:
    """The `model` sub-config of an ml_collections config file (its `get_config()`)."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"--config {path}: no such file")
    # Config files import their siblings as `configs.<name>`: make the folder above visible.
    sys.path.insert(0, str(p.resolve().parent.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_profile_config_{p.stem}", p)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as e:  # any error in user code is a bad config file
        raise ProfileError(f"--config {path}: cannot load ({type(e).__name__}: {e})") from e
    finally:
        sys.path.pop(0)
    model = getattr(config, "model", None)
    if model is None:
        raise ProfileError(f"--config {path}: has no `model` sub-config")
    return dict(model.to_dict() if hasattr(model, "to_dict") else model)


def _build_model(args: argparse.Namespace) -> tuple[MAFFSRN, Any | None]:
    sources = [f for f, v in (("--config", args.config), ("--checkpoint", args.checkpoint)) if v]
    if len(sources) > 1:
        raise ProfileError(f"give one model source, not both {' and '.join(sources)}")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise ProfileError(f"--dtype {args.dtype!r}: expected one of {', '.join(DTYPES)}")
    overrides = {"dtype": DTYPES[args.dtype]} if args.dtype else {}
    if args.checkpoint:
        if args.scale is not None or args.n_ffgs is not None:
            raise ProfileError("--checkpoint defines the model: drop --scale/--n-ffgs")
        from maffsrn_jax.convert import CheckpointError, load_pretrained

        try:
            model, variables = load_pretrained(args.checkpoint, **overrides)
        except CheckpointError as e:
            raise ProfileError(str(e)) from e
        return model, variables["params"]
    if args.config:
        fields = load_config_model(args.config)
        if args.scale is not None:
            fields["scale"] = args.scale
        if args.n_ffgs is not None:
            fields["n_ffgs"] = args.n_ffgs
    else:
        fields = {"scale": 4 if args.scale is None else args.scale, "n_ffgs": args.n_ffgs or 4}
    if isinstance(fields.get("dtype"), str):
        if fields["dtype"] not in DTYPES:
            known = ", ".join(DTYPES)
            raise ProfileError(f"model dtype {fields['dtype']!r}: expected one of {known}")
        fields["dtype"] = DTYPES[fields["dtype"]]
    fields.update(overrides)
    try:
        return MAFFSRN(**fields), None
    except (TypeError, ValueError) as e:
        raise ProfileError(f"bad model description: {e}") from e


def _input_shape(args: argparse.Namespace, scale: int) -> tuple[int, int, int, int]:
    if args.input_size and args.output_size:
        raise ProfileError("give --input-size or --output-size, not both")
    if args.output_size:
        hr_h, hr_w = parse_size(args.output_size, "--output-size")
        h, w = hr_h // scale, hr_w // scale
    elif args.input_size:
        h, w = parse_size(args.input_size, "--input-size")
    else:
        h = w = 48 if args.train else 256
    check_lr_size((h, w), "--output-size" if args.output_size else "--input-size")
    batch = args.batch_size if args.batch_size is not None else (16 if args.train else 1)
    if batch < 1:
        raise ProfileError(f"--batch-size {batch}: must be at least 1")
    return batch, h, w, 3


def _format(report: dict[str, Any]) -> str:
    def giga(v):
        return "n/a" if v is None else f"{v / 1e9:.2f} G"

    mem = report["peak_memory_bytes"]
    timing = "train_step_ms" if "train_step_ms" in report else "latency_ms"
    t = report[timing]
    faults = report.get("page_faults_per_run")
    lines = [
        f"model             MAFFSRN x{report['model']['scale']}, {report['model']['n_ffgs']} FFGs, "
        f"{report['model']['dtype']}, {report['mode']} on {report['input_shape']}",
        f"params            {report['params']:,}",
        f"macs              {giga(report['macs'])} (conv multiply-adds, forward)",
        f"flops             {giga(report['flops'])} (XLA cost analysis)",
        f"bytes_accessed    {giga(report['bytes_accessed'])}B",
        f"peak_memory       {'n/a' if mem is None else f'{mem / 2**20:.1f} MiB'} "
        "(XLA: arguments + outputs + temporaries)",
        f"compile           {report['compile_s']:.2f} s",
        f"{timing:<17} {'n/a' if t is None else f'{t:.1f}'}",
        f"page_faults       {'n/a' if faults is None else f'{faults:,}'} (minor, per timed run)",
        f"device            {report['device']}",
    ]
    return "\n".join(lines)


class ArgumentError(Exception):
    """A flag argparse rejected (reported as one line, exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise `ArgumentError` instead of printing the usage block."""

    def error(self, message: str):
        raise ArgumentError(message)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--xla-option / --xla-defaults (read back by `resolve_options`) and --malloc-defaults."""
    p.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                   help="XLA compiler option for the JAX programs (repeatable)")
    p.add_argument("--xla-defaults", action="store_true",
                   help="start from XLA's defaults instead of maffsrn_jax.xla_options")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc as it is (no xla_options.keep_freed_memory)")


def setup_malloc(malloc_defaults: bool) -> bool:
    """What every entry point does first: `keep_freed_memory()` unless --malloc-defaults.

    Returns whether freed memory is kept (False with --malloc-defaults or off glibc).
    """
    return False if malloc_defaults else xla_options.keep_freed_memory()


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m maffsrn_jax.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default 4)")
    p.add_argument("--n-ffgs", type=int, default=None, help="4: MAFFSRN, 8: MAFFSRN-L")
    p.add_argument("--config", default=None, help="ml_collections config file with `model`")
    p.add_argument("--checkpoint", default=None, help="Orbax dir, .pt/.pth or .safetensors")
    p.add_argument("--input-size", default=None, metavar="HxW", help="LR input size")
    p.add_argument("--output-size", default=None, metavar="HxW", help="HR size; LR = HR // S")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--dtype", default=None, help="compute dtype: float32 | bfloat16")
    p.add_argument("--train", action="store_true", help="profile one L1 + AdamP train step")
    p.add_argument("--repeats", type=int, default=10, help="timed runs (0: no timing)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    p.add_argument("--trace", default=None, metavar="DIR", help="write a jax.profiler trace")
    p.add_argument("--dump-hlo", default=None, metavar="DIR", help="write StableHLO and HLO")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON")
    add_runtime_arguments(p)
    return p


def resolve_options(items: Sequence[str], xla_defaults: bool) -> dict[str, Any]:
    """The package's compiler options (none with `xla_defaults`), updated by --xla-option."""
    base = xla_options.resolve({} if xla_defaults else None)
    return {**base, **parse_xla_options(items)}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        kept = setup_malloc(args.malloc_defaults)
        if args.repeats < 0 or args.warmup < 0:
            raise ProfileError("--repeats and --warmup must be >= 0")
        model, params = _build_model(args)
        shape = _input_shape(args, model.scale)
        report = profile_model(
            model,
            params,
            shape,
            train=args.train,
            warmup=args.warmup,
            repeats=args.repeats,
            trace_dir=args.trace,
            hlo_dir=args.dump_hlo,
            compiler_options=resolve_options(args.xla_option, args.xla_defaults),
        )
        report["malloc_keeps_freed_memory"] = kept
    except (ArgumentError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_format(report))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
