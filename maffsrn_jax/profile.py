"""Size, cost, memory and speed of MAFFSRN as XLA compiles it: the paper's efficiency numbers.

    python -m maffsrn_jax.profile --scale 4 --input-size 256x256           # AIM 2020 setting
    python -m maffsrn_jax.profile --scale 2 --output-size 720x1280         # 720p HR output
    python -m maffsrn_jax.profile --config configs/maffsrn_l_x4.py --output-size 720x1280
    python -m maffsrn_jax.profile --checkpoint model.pt --train --json out.json
    python -m maffsrn_jax.profile --scale 4 --trace /tmp/trace --dump-hlo /tmp/hlo
    python -m maffsrn_jax.trace_summary /tmp/trace          # op time per HLO op kind
    python -m maffsrn_jax.profile --scale 4 --xla-defaults     # without the package's options
    python -m maffsrn_jax.profile --protocol challenge --data DIV2K/DIV2K_valid_LR_bicubic/X4

Reports (and writes with `--json`):
  params             parameter scalars (weight-norm gain and direction both count, as PyTorch)
  macs               convolution multiply-adds of one forward pass over the whole batch,
                     counted per Conv layer of the architecture (see `counts.conv_macs`)
  challenge_flops    the efficient-SR challenges' FLOPs of that forward pass (AIM 2020, NTIRE
                     2022-2023): conv multiply-adds + one per output of each ReLU-family
                     activation module of the official code (`counts.challenge_counts`)
  activations        elements of all convolution outputs (the challenges' "#Activations")
  num_convs          convolution layers run (a 1x1 written as a matmul counts as its conv)
  flops, bytes_accessed   XLA's cost analysis of the compiled program (forward, or the
                     whole train step with `--train`), taken with XLA's own convolutions
                     where the AVX-512 kernels of `cpu_conv` run (it cannot see into them)
  peak_memory_bytes  XLA's memory analysis: arguments + outputs + temporaries (buffers that an
                     output aliases, i.e. the donated train state, counted once)
  compile_s          lowering + compilation time
  latency_ms         median wall time of one forward after warm-up (`train_step_ms` with
                     `--train`: one L1 + AdamP step, state donated)
  page_faults_per_run  minor page faults of the process per timed run, the median over the
                     runs (getrusage; memory the allocator maps afresh each run faults in
                     again, while growing the heap once to its high-water mark is not typical)
  device             the JAX device the program ran on
  malloc_keeps_freed_memory  whether `xla_options.tune_process` made malloc keep freed
                     memory (CPU runs, not with `--malloc-defaults`)

Programs compile with the package's XLA options (`maffsrn_jax.xla_options`: on CPU, XLA's
multi-threaded Eigen kernels instead of YNNPACK's single-threaded ones); `--xla-defaults`
drops them, `--xla-option KEY=VALUE` (repeatable) adds or overrides one. Like every entry
point, the command first tunes the process (`xla_options.tune_process`: on CPU runs, malloc
keeps freed memory); `--malloc-defaults` leaves glibc's defaults.

Sizes are HxW. `--output-size` gives the HR size; the LR input is HR // scale per side, as the
official counts do (x3 at 720x1280 -> 240x426). Without a size the input is 256x256 (48x48
with `--train`, the paper's training patch); the batch is 1 (16 with `--train`).

`--protocol challenge` runs the efficient-SR challenges' runtime and memory protocol (NTIRE's
`test_demo.py`) on whatever device JAX has: the model (x4 unless told otherwise) over the
100 DIV2K validation LR images (`--data DIR`: a folder of them, or a DIV2K root holding
`DIV2K_valid_LR_bicubic/X<scale>`), each on the device before its clock starts, one image at
a time. Every distinct size is compiled and run once before timing (`compile_s` per size,
apart from the runtimes). Reported: `runtime_ms_mean` (the challenges' figure) and
`runtime_ms_median` per image, and `peak_memory_bytes`: on a GPU the allocator's peak bytes
in use (`device.memory_stats()['peak_bytes_in_use']`, the counterpart of
`torch.cuda.max_memory_allocated`), on CPU XLA's memory analysis of each size's program, the
largest. The counts (`params`, `challenge_flops`, `activations`, `num_convs`) are taken on one
256x256 LR image, as the challenges count. Without `--data`, random images at DIV2K's usual
LR sizes (339x510 and 510x339 at x4, alternating) stand in, and the report says so
(`stand_ins`). `--limit N` times the first N images only (a CPU run of all 100 at x4 takes
minutes per size class).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maffsrn_jax import cpu_conv, train_lib, xla_options
from maffsrn_jax.cli import prog_name
from maffsrn_jax.counts import (
    CHALLENGE_INPUT_SHAPE,
    challenge_counts,
    conv_macs,
    param_count,
)
from maffsrn_jax.errors import Error, first_line, parse_size, run_cli
from maffsrn_jax.files import list_images, write_atomic, write_json_atomic
from maffsrn_jax.models import MAFFSRN, MIN_INPUT_SIZE, count_params

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TRAIN_LEARNING_RATE = 2e-4  # the paper's; the value does not change the cost of a step


class ProfileError(Error):
    """A bad flag, size or model description (reported as one line, exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise `Error` (one line, exit status 2) instead of printing the
    usage block."""

    def error(self, message: str):
        raise Error(message)


# --- the benchmarked programs (also run by the checkout's `benchmarks.speed`) ----------------


def make_train_step(model: Any) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
    """(init_state(params) -> state, train_step(state, batch) -> (state, metrics)).

    The project's train step (`train_lib`: L1 loss + AdamP, non-finite steps skipped) on one
    device, with the paper's AdamP settings. The batch is {'lr': uint8 [B, h, w, 3], 'hr':
    uint8 [B, sh, sw, 3]}. The step is not jitted here.
    """
    import optax

    from maffsrn_jax.optim import adamp

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


def benchmark_program(
    model: MAFFSRN, params: Any, input_shape: Sequence[int], *, train: bool = False,
    seed: int = 0,
) -> tuple[Callable[..., Any], tuple[Any, ...], tuple[int, ...]]:
    """(fn, args, donate_argnums): what is profiled and timed, its inputs on the device.

    Inference: `model.apply` on a random float32 NHWC batch. `train`: one step of
    `make_train_step` on a random uint8 batch (`random_batch`), its state donated.
    """
    n, h, w, _ = input_shape
    params = jax.device_put(params)
    if train:
        init_state, step = make_train_step(model)
        batch = jax.device_put(random_batch(n, (h, w), model.scale, seed))
        return step, (jax.jit(init_state)(params), batch), (0,)
    x = np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)
    return model.apply, ({"params": params}, jax.device_put(x)), ()


def step_runner(program: Callable[..., Any], args: tuple[Any, ...], train: bool
                ) -> Callable[[], Any]:
    """A function that runs `program` (jitted or compiled) once on `args` and waits for it.

    It returns the output (the metrics with `train`, the donated state carried over from
    one step to the next).
    """
    if not train:
        return lambda: jax.block_until_ready(program(*args))
    holder = {"state": args[0]}

    def run():
        holder["state"], metrics = program(holder["state"], *args[1:])
        return jax.block_until_ready(metrics)

    return run


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (getrusage), or None where unsupported."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_steps(
    run: Callable[[], Any],
    steps: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
    page_faults: Callable[[], int | None] = minor_page_faults,
) -> tuple[list[float], float | None]:
    """`warmup` untimed then `steps` timed consecutive runs of `run` (which waits for its
    result).

    Returns (milliseconds of each timed step, minor page faults per timed step or None).
    The steps follow each other with nothing but the clock between them, as in a user's
    loop; each step's time runs from the end of the previous one.
    """
    for _ in range(warmup):
        run()
    faults_before = page_faults()
    times = []
    start = clock()
    for _ in range(steps):
        run()
        end = clock()
        times.append((end - start) * 1e3)
        start = end
    faults_after = page_faults()
    if faults_before is None or faults_after is None:
        return times, None
    return times, (faults_after - faults_before) / steps


def describe_device() -> str:
    """'cpu (2 cores)' or e.g. 'gpu: NVIDIA H100 80GB HBM3 (x1)', for reports."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind} (x{jax.device_count()})"


def write_output(path: str | os.PathLike, data: Any) -> None:
    """`data` to `path` atomically (text as it is, anything else as JSON), its folder made
    if need be."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        write_atomic(path, data)
    else:
        write_json_atomic(path, data)


# --- flags shared with `benchmarks.speed` -----------------------------------------------------


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


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--xla-option / --xla-defaults (read back by `resolve_options`) and --malloc-defaults."""
    p.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                   help="XLA compiler option for the JAX programs (repeatable)")
    p.add_argument("--xla-defaults", action="store_true",
                   help="start from XLA's defaults instead of maffsrn_jax.xla_options")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc as it is (no xla_options.tune_process)")


def resolve_options(items: Sequence[str], xla_defaults: bool) -> dict[str, Any]:
    """The package's compiler options (XLA's defaults with `xla_defaults`), + --xla-option."""
    base = xla_options.resolve({} if xla_defaults else None)
    return {**base, **parse_xla_options(items)}


def setup_malloc(malloc_defaults: bool, platform: str | None = None) -> bool:
    """What every entry point does first: `xla_options.tune_process(platform)` unless
    --malloc-defaults.

    Returns whether freed memory is kept (False with --malloc-defaults, on accelerator runs
    and off glibc).
    """
    return False if malloc_defaults else xla_options.tune_process(platform)


# --- the profile --------------------------------------------------------------------------


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
        **challenge_counts(model, (n, h, w, 3)),
    }

    fn, args, donate = benchmark_program(model, params, input_shape, train=train)
    jitted = jax.jit(fn, donate_argnums=donate, compiler_options=compiler_options)

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
    if cpu_conv.KERNEL_PREFIX in lowered.as_text():
        # The kernels' custom calls count nothing in XLA's cost analysis: take it from the
        # same program with XLA's own convolutions (a fresh function, so traced anew).
        with cpu_conv.xla_convolutions():
            plain = jax.jit(lambda *a: fn(*a), donate_argnums=donate,
                            compiler_options=compiler_options)
            cost = _cost(plain.lower(*args).compile())
    report["flops"] = cost.get("flops")
    report["bytes_accessed"] = cost.get("bytes accessed")
    report["peak_memory_bytes"] = _peak_memory(compiled)
    report["compiler_options"] = dict(compiler_options)
    report["xla_flags"] = os.environ.get("XLA_FLAGS", "")

    if hlo_dir is not None:
        stem = "train_step" if train else "forward"
        write_output(Path(hlo_dir) / f"{stem}.stablehlo.mlir", lowered.as_text())
        write_output(Path(hlo_dir) / f"{stem}.optimized.hlo.txt", compiled.as_text())

    # Each run timed on its own, and the median taken: the heap can reach its high-water mark
    # during a timed run rather than the warm-up (~250k page faults once for the x2 train
    # step), which says nothing about the runs after it.
    run = step_runner(compiled, args, train)
    runs = [time_steps(run, 1, warmup if i == 0 else 0) for i in range(repeats)]
    faults = [f for _, f in runs]
    report["train_step_ms" if train else "latency_ms"] = (
        round(float(np.median([t for (t,), _ in runs])), 3) if runs else None
    )
    report["page_faults_per_run"] = (
        None if not runs or None in faults else round(float(np.median(faults)))
    )
    if trace_dir is not None:
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            for _ in range(max(1, min(repeats, 3))):
                run()
    report["device"] = describe_device()
    return report


# --- the challenges' runtime and memory protocol --------------------------------------------

# DIV2K's validation HR images are mostly 2040x1356 (landscape) or 1356x2040 (portrait); at x4
# their LR images are 339x510 and 510x339 (HxW).
DIV2K_LR_SIZES = ((339, 510), (510, 339))
DIV2K_VALID_IMAGES = 100


def challenge_images(
    data: str | os.PathLike | None, scale: int, limit: int | None = None, seed: int = 0
) -> tuple[list[tuple[str, np.ndarray]], bool]:
    """([(name, float32 [H, W, 3] in [0, 1]), ...], stand_ins) for the challenge protocol.

    `data` is a folder of LR images or a DIV2K root (its `DIV2K_valid_LR_bicubic/X<scale>`
    is used); None gives random stand-ins at DIV2K's usual x4 LR sizes, alternating, 100 of
    them. `limit` keeps the first N (in name order).
    """
    count = DIV2K_VALID_IMAGES if limit is None else min(limit, DIV2K_VALID_IMAGES)
    if data is None:
        rng = np.random.default_rng(seed)
        images = []
        for i in range(count):
            h, w = DIV2K_LR_SIZES[i % len(DIV2K_LR_SIZES)]
            images.append((f"stand_in_{i:03d}", rng.random((h, w, 3), dtype=np.float32)))
        return images, True
    from maffsrn_jax import image_io

    root = Path(data)
    folder = root / "DIV2K_valid_LR_bicubic" / f"X{scale}"
    folder = folder if folder.is_dir() else root
    if not folder.is_dir():
        raise ProfileError(f"--data {data}: no such folder")
    paths = list_images(folder)
    if not paths:
        raise ProfileError(f"--data {data}: no images in {folder}")
    if limit is not None:
        paths = paths[:limit]
    images = []
    for path in paths:
        try:
            pixels = image_io.to_rgb_uint8(image_io.load_image(path))
        except (OSError, ValueError) as e:
            raise ProfileError(f"--data: cannot read {path}: {first_line(e)}") from e
        check_lr_size(pixels.shape[:2], f"--data {path.name}")
        images.append((path.name, pixels.astype(np.float32) / 255.0))
    return images, False


def _device_peak_bytes(device: Any) -> int | None:
    """The allocator's peak bytes in use on `device`, or None where it keeps no statistics."""
    try:
        stats = device.memory_stats()
    except Exception:  # CPU and some plugins raise rather than return None
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def challenge_protocol(
    model: MAFFSRN,
    params: Any | None,
    images: Sequence[tuple[str, np.ndarray]],
    *,
    compiler_options: dict[str, Any] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """The challenges' runtime and memory protocol over `images` (see the module docstring).

    Each distinct size is compiled and run once untimed first; then every image, already on
    the device, is timed from the call to the finished output. Returns the protocol's report
    (runtimes per image in `runtime_ms`, their mean and median, the peak memory and how it
    was read, compile times per size).
    """
    if not images:
        raise ProfileError("the challenge protocol needs at least one image")
    compiler_options = xla_options.resolve(compiler_options)
    if params is None:
        params = train_lib.init_params(model, jax.random.key(0))
    device = jax.devices()[0]
    variables = jax.device_put({"params": params}, device)
    forward = jax.jit(model.apply, compiler_options=compiler_options)

    sizes: dict[tuple[int, int], dict[str, Any]] = {}
    programs: dict[tuple[int, int], Any] = {}
    for _, image in images:
        hw = image.shape[:2]
        if hw in programs:
            sizes[hw]["images"] += 1
            continue
        spec = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
        start = clock()
        compiled = forward.lower(variables, spec).compile()
        jax.block_until_ready(compiled(variables, jnp.zeros(spec.shape, spec.dtype, device=device)))
        programs[hw] = compiled
        sizes[hw] = {
            "size": list(hw),
            "images": 1,
            "compile_s": round(clock() - start, 3),
            "xla_peak_memory_bytes": _peak_memory(compiled),
        }

    runtimes = []
    for _, image in images:
        x = jax.device_put(image[None], device)
        jax.block_until_ready(x)
        start = clock()
        jax.block_until_ready(programs[image.shape[:2]](variables, x))
        runtimes.append((clock() - start) * 1e3)

    allocator_peak = _device_peak_bytes(device)
    if allocator_peak is not None:
        peak, method = int(allocator_peak), "allocator peak_bytes_in_use (device.memory_stats)"
    else:
        analysed = [s["xla_peak_memory_bytes"] for s in sizes.values()]
        peak = None if None in analysed else max(analysed)
        method = "XLA memory analysis (arguments + outputs + temporaries), largest size"
    return {
        "protocol": "challenge",
        "images": len(images),
        "sizes": list(sizes.values()),
        "compile_s": round(sum(s["compile_s"] for s in sizes.values()), 3),
        "runtime_ms_mean": round(float(np.mean(runtimes)), 3),
        "runtime_ms_median": round(float(np.median(runtimes)), 3),
        "runtime_ms": [round(t, 3) for t in runtimes],
        "peak_memory_bytes": peak,
        "peak_memory_method": method,
        "compiler_options": dict(compiler_options),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "device": describe_device(),
    }


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
        f"challenge_flops   {report['challenge_flops'] / 1e9:.3f} G (AIM 2020 / NTIRE 2022-23 "
        "counter: conv MACs + ReLU-family outputs)",
        f"activations       {report['activations'] / 1e6:.2f} M (conv output elements), "
        f"{report['num_convs']} convs",
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


def _format_protocol(report: dict[str, Any]) -> str:
    mem = report["peak_memory_bytes"]
    sizes = ", ".join(
        f"{s['size'][0]}x{s['size'][1]} ({s['images']} images, compile {s['compile_s']:.1f} s)"
        for s in report["sizes"]
    )
    source = "random stand-ins at DIV2K's LR sizes" if report["stand_ins"] else report["data"]
    lines = [
        f"model             MAFFSRN x{report['model']['scale']}, {report['model']['n_ffgs']} FFGs, "
        f"{report['model']['dtype']}, challenge protocol",
        f"images            {report['images']} from {source}",
        f"sizes             {sizes}",
        f"runtime           mean {report['runtime_ms_mean']:.1f} ms, median "
        f"{report['runtime_ms_median']:.1f} ms per image (compile excluded)",
        f"peak_memory       {'n/a' if mem is None else f'{mem / 2**20:.1f} MiB'} "
        f"({report['peak_memory_method']})",
        f"params            {report['params']:,}",
        f"challenge_flops   {report['challenge_flops'] / 1e9:.3f} G on 1x256x256 "
        f"(activations {report['activations'] / 1e6:.2f} M, {report['num_convs']} convs)",
        f"device            {report['device']}",
    ]
    return "\n".join(lines)


def run_challenge_protocol(args: argparse.Namespace) -> dict[str, Any]:
    """`--protocol challenge`: the model of the flags through `challenge_protocol`."""
    conflicting = [
        flag
        for flag, value in (
            ("--train", args.train),
            ("--input-size", args.input_size),
            ("--output-size", args.output_size),
            ("--batch-size", args.batch_size),
            ("--trace", args.trace),
            ("--dump-hlo", args.dump_hlo),
        )
        if value
    ]
    if conflicting:
        raise ProfileError(f"--protocol challenge sets its own inputs: drop {conflicting[0]}")
    if args.limit is not None and args.limit < 1:
        raise ProfileError(f"--limit {args.limit}: must be at least 1")
    model, params = _build_model(args)
    images, stand_ins = challenge_images(args.data, model.scale, args.limit)
    report: dict[str, Any] = {
        "model": {"scale": model.scale, "n_ffgs": model.n_ffgs,
                  "dtype": jnp.dtype(model.dtype).name},
        "mode": "inference",
        "data": None if args.data is None else str(args.data),
        "stand_ins": stand_ins,
        "limit": args.limit,
        "params": param_count(model),
        "count_input_shape": list(CHALLENGE_INPUT_SHAPE),
        "macs": conv_macs(model, CHALLENGE_INPUT_SHAPE),
        **challenge_counts(model, CHALLENGE_INPUT_SHAPE),
    }
    report.update(
        challenge_protocol(
            model, params, images,
            compiler_options=resolve_options(args.xla_option, args.xla_defaults),
        )
    )
    return report


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog_name("maffsrn_jax.profile"),
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
    p.add_argument("--protocol", choices=("challenge",), default=None,
                   help="challenge: the efficient-SR challenges' runtime/memory protocol")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="with --protocol challenge: DIV2K validation LR images (or DIV2K root)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="with --protocol challenge: time the first N images only")
    add_runtime_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()

    def body() -> None:
        args = parser.parse_args(argv)
        kept = setup_malloc(args.malloc_defaults)
        if args.repeats < 0 or args.warmup < 0:
            raise ProfileError("--repeats and --warmup must be >= 0")
        if args.protocol is None and (args.data is not None or args.limit is not None):
            raise ProfileError("--data and --limit go with --protocol challenge")
        if args.protocol == "challenge":
            report = run_challenge_protocol(args)
            report["malloc_keeps_freed_memory"] = kept
            print(_format_protocol(report))
            if args.json:
                write_output(args.json, report)
            return
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
        print(_format(report))
        if args.json:
            write_output(args.json, report)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
