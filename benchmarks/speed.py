"""Side-by-side speed of this JAX model, the PyTorch reference, ONNX Runtime and LiteRT.

A development harness, run from a checkout (it is not part of the installed package):

    python -m benchmarks.speed                      # both benchmarks, table on stdout
    python -m benchmarks.speed --only inference --rounds 6 --steps 10 --json speed.json
    python -m benchmarks.speed --xla-defaults       # JAX without the package's XLA options
    python -m benchmarks.speed --torch-keeps-freed-memory   # PyTorch with JAX's malloc setting
    python -m benchmarks.speed --device gpu --inference-size 339x510 --torch-compile
    python -m benchmarks.speed --xla-conv-side      # also JAX without the AVX-512 kernels

Benchmarks (the issue's settings):
  inference   x4 MAFFSRN on one 256x256 LR image (the AIM 2020 setting); PyTorch in eval
              mode under `torch.inference_mode()`, JAX jitted, ONNX Runtime and LiteRT on
              the same model exported by `maffsrn_jax.export` (float32; TFLite at the
              benchmark's fixed size).
  train       one x2 training step on a batch of 16 48x48 LR patches: forward, L1 loss,
              backward and an AdamP update (PyTorch: `adamp.AdamP`; JAX: the project's
              `train_lib` step with `optim.adamp`, state donated). Both read the same uint8
              batch and convert it to [0, 1] floats inside the step. No exported-model sides.

Steady state, measured as users run each framework: every side lives in its own worker
process (no shared thread pools or malloc state) and, when its turn comes, runs a plain loop
of `--warmup` untimed and then `--steps` timed consecutive steps, with nothing between the
steps but the clock. The sides take turns in rounds whose order reverses every round (A B,
B A, A B, ...; A B C, C B A with three sides), so a drifting machine load hits every side
alike. Reported per side: the median of the per-round medians (`<side>_ms`), their spread
(`<side>_ms_range`, min-max of the round medians), the ratio of those medians JAX / other
side and the median of the per-round ratios, and the minor page faults per step.

The JAX worker starts like every entry point of the package, tuning the process
(`xla_options.tune_process`: on CPU runs glibc's malloc keeps freed memory;
`--malloc-defaults` skips that). The PyTorch,
ONNX Runtime and LiteRT workers keep glibc's defaults, as their users run them, unless
`--torch-keeps-freed-memory` (PyTorch only). All sides start from the same weights (the
PyTorch model's initialisation, converted).

Threads: PyTorch gets `torch.set_num_threads(os.cpu_count())`, ONNX Runtime as many
intra-op threads and LiteRT's interpreter as many threads, the size of XLA:CPU's own pool,
so every side uses every core. Wall times, not CPU times, are compared.

The ONNX Runtime side needs `onnxruntime` and torch (the exporter), the LiteRT side
`ai-edge-litert` and tensorflow; without them a side is skipped with a one-line note
(`<side>_skipped`), and `--no-onnx` / `--no-litert` skip one on purpose. If exporting or
loading fails, the error is reported (`<side>_error`) and the other sides still run.

Older flags: `--repeats N` is read as `--rounds N`; `--pause S` sleeps S seconds before each
round (never between timed steps; 0 by default).

GPU (`--device gpu`): the frameworks run on the first CUDA device, and every timed step ends
when the device has finished (`block_until_ready`, `torch.cuda.synchronize`). PyTorch runs
with `torch.backends.cudnn.benchmark = True` (the fastest cuDNN algorithm for the fixed
shapes) and its default TF32 setting for convolutions, as JAX uses TF32 for float32
convolutions on such GPUs by default; `agreement` shows what that costs. ONNX Runtime uses
its CUDA execution provider. `--inference-size` sets the LR size of the inference benchmark
(339x510 is a DIV2K validation image at x4: 2040x1356 HR). `--torch-compile` adds a side,
PyTorch with the model under `torch.compile` (the AdamP update stays eager, as `adamp` is
written), timed in the same rotation; if compiling fails there, its error is reported and
the other sides still run.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from maffsrn_jax.errors import Error, first_line, parse_size, run_cli
from maffsrn_jax.profile import (
    TRAIN_LEARNING_RATE,
    OneLineParser,
    add_runtime_arguments,
    check_lr_size,
    parse_xla_options,
    random_batch,
    setup_malloc,
    time_steps,
    write_output,
)

BENCHMARKS = ("inference", "train")

# Untimed steps at the start of every turn. A fresh worker's first steps still grow its heap
# to the high-water mark of the step's temporaries (page faults and slower steps on every
# side); one untimed step is not always enough for the x2 train step.
WARMUP = 3
SIDES = ("jax", "torch")  # the optional sides follow: exported models, torch.compile
OPTIONAL_SIDES = ("onnxruntime", "litert", "torch_compile", "jax_xla_conv")
JAX_SIDES = ("jax", "jax_xla_conv")  # the second without cpu_conv's kernels
# What each exported-model side needs installed, as (module, what to say without it).
_EXPORT_SIDE_NEEDS = {
    "onnxruntime": (
        ("onnxruntime", "onnxruntime is not installed (pip install onnxruntime)"),
        ("torch", "exporting to ONNX needs torch"),
    ),
    "litert": (
        ("ai_edge_litert", "ai-edge-litert is not installed (pip install ai-edge-litert)"),
        ("tensorflow", "exporting to TFLite needs tensorflow"),
    ),
}
DEVICES = ("cpu", "gpu")
INFERENCE = {"scale": 4, "n_ffgs": 4, "batch": 1, "size": (256, 256)}
TRAIN = {"scale": 2, "n_ffgs": 4, "batch": 16, "size": (48, 48)}

Options = dict[str, Any] | None


class SpeedError(Error):
    """A bad flag or a failed worker (reported as one line, exit status 2)."""


def _torch():
    try:
        import torch
    except ImportError as e:  # torch is an optional dependency of the package
        raise SpeedError("the PyTorch side needs torch (and adamp): pip install torch adamp") from e
    return torch


def initial_weights(setting: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """The PyTorch model's initialisation for `setting`, as an official state_dict of arrays."""
    torch = _torch()
    from maffsrn_jax import torch_model

    torch.manual_seed(seed)
    net = torch_model.MAFFSRN(setting["scale"], n_ffgs=setting["n_ffgs"])
    return {k: v.numpy() for k, v in net.state_dict().items()}


class Job(NamedTuple):
    """What a worker builds: one benchmark, on one device, from the same weights."""

    name: str  # 'inference' or 'train'
    setting: dict[str, Any]  # scale, n_ffgs, batch, size (LR H, W)
    weights: dict[str, np.ndarray]  # an official state_dict
    seed: int
    options: Options  # XLA compiler options for JAX (None: the package's)
    overrides: dict[str, Any]  # added to them
    device: str  # 'cpu' or 'gpu'


def _jax_run(job: Job):
    """(run, first output, environment) of the JAX side, in the JAX worker."""
    import jax

    name, setting, weights, seed, options, overrides, device = job

    from maffsrn_jax import xla_options

    # Before JAX starts a backend: the worker is a fresh process, so this picks its platform.
    jax.config.update("jax_platforms", "cuda" if device == "gpu" else "cpu")
    try:
        jax.devices()
    except Exception as e:  # a RuntimeError, or an AssertionError where no plugin is installed
        raise SpeedError(
            f"--device {device}: JAX cannot start that backend ({first_line(e)})"
        ) from e

    from maffsrn_jax import convert
    from maffsrn_jax.profile import benchmark_program, describe_device, step_runner

    model, variables = convert.torch_to_flax(weights)
    options = {**xla_options.resolve(options), **overrides}
    env = {
        "jax": jax.__version__,
        "device": describe_device(),
        "jax_dtype": "float32",  # the benchmarks' compute dtype
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision or "default",
        "xla_compiler_options": options,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    b, (h, w) = setting["batch"], setting["size"]
    train = name == "train"
    fn, args, donate = benchmark_program(
        model, variables["params"], (b, h, w, 3), train=train, seed=seed)
    run = step_runner(jax.jit(fn, donate_argnums=donate, compiler_options=options), args, train)
    first = run()
    return run, float(first["loss"]) if train else np.asarray(first), env


def _torch_run(job: Job, compiled: bool):
    """(run, first output, environment) of a PyTorch side (`compiled`: under torch.compile)."""
    name, setting, weights, seed, device = job.name, job.setting, job.weights, job.seed, job.device
    torch = _torch()
    from maffsrn_jax import torch_model

    torch.set_num_threads(os.cpu_count() or 1)
    env = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if device == "gpu":
        if not torch.cuda.is_available():
            raise SpeedError("--device gpu: PyTorch sees no CUDA device")
        dev = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        env.update(
            torch_device=torch.cuda.get_device_name(dev),
            torch_cudnn_benchmark=True,
            torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        )

        def finish(value):
            torch.cuda.synchronize(dev)
            return value
    else:
        dev = torch.device("cpu")

        def finish(value):
            return value

    net = torch_model.MAFFSRN(setting["scale"], n_ffgs=setting["n_ffgs"])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    net.to(dev)
    forward = torch.compile(net) if compiled else net
    if compiled:
        env["torch_compile"] = "torch.compile(model), default mode"
    b, (h, w) = setting["batch"], setting["size"]
    if name == "inference":
        x = np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32)
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)
        net.eval()

        def run():
            with torch.inference_mode():
                return finish(forward(x))

        return run, run().permute(0, 2, 3, 1).cpu().numpy(), env

    try:
        from adamp import AdamP
    except ImportError as e:
        raise SpeedError("the PyTorch side needs adamp: pip install adamp") from e
    net.train()
    optimizer = AdamP(net.parameters(), lr=TRAIN_LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
    batch = random_batch(b, (h, w), setting["scale"], seed)
    lr_u8 = torch.from_numpy(batch["lr"]).permute(0, 3, 1, 2).contiguous().to(dev)
    hr_u8 = torch.from_numpy(batch["hr"]).permute(0, 3, 1, 2).contiguous().to(dev)

    def run():
        optimizer.zero_grad(set_to_none=True)
        sr = forward(lr_u8.float() / 255.0)
        loss = (sr - hr_u8.float() / 255.0).abs().mean()
        loss.backward()
        optimizer.step()
        return finish(loss.detach())

    return run, float(run()), env


def export_side_missing(side: str) -> str | None:
    """Why an exported-model side ('onnxruntime', 'litert') cannot run here, or None."""
    for module, what in (
        *_EXPORT_SIDE_NEEDS[side],
        ("maffsrn_jax.export", "maffsrn_jax.export (the exporter) is not available"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return what
    return None


def _exported(job: Job, side: str, export: Callable[..., None], suffix: str,
              open_: Callable[[str], Any]) -> tuple[Any, np.ndarray]:
    """(the opened model, the NHWC input) of an exported-model side (inference only): the
    job's weights written by `export(model, variables, path)` to a temporary file, which
    `open_(path)` loads before the file goes."""
    if job.name != "inference":
        raise SpeedError(f"the {_LABELS[side]} side runs inference only")
    from maffsrn_jax import convert

    model, variables = convert.torch_to_flax(job.weights)
    b, (h, w) = job.setting["batch"], job.setting["size"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "maffsrn" + suffix)
        export(model, variables, path)
        opened = open_(path)
    return opened, np.random.default_rng(job.seed).random((b, h, w, 3), dtype=np.float32)


def _onnx_run(job: Job):
    """(run, first output, environment) of the ONNX Runtime side."""
    import onnxruntime as ort

    from maffsrn_jax.export import export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    provider = "CUDAExecutionProvider" if job.device == "gpu" else "CPUExecutionProvider"

    def open_session(path: str):
        if provider not in ort.get_available_providers():
            raise SpeedError("--device gpu: onnxruntime has no CUDA execution provider")
        return ort.InferenceSession(path, options, providers=[provider])

    session, x = _exported(
        job, "onnxruntime", lambda m, v, path: export_onnx(m, v, path, precision="float32"),
        ".onnx", open_session)
    feed = session.get_inputs()[0]
    # The exporter's layout is read off the graph: NHWC like the Flax model, or NCHW.
    nchw = len(feed.shape) == 4 and feed.shape[1] == 3 and feed.shape[-1] != 3
    if nchw:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    env = {
        "onnxruntime": ort.__version__,
        "onnxruntime_threads": options.intra_op_num_threads,
        "onnxruntime_input_layout": "NCHW" if nchw else "NHWC",
    }

    def run():
        return session.run(None, {feed.name: x})[0]

    first = run()
    return run, (first.transpose(0, 2, 3, 1) if nchw else first), env


def _litert_run(job: Job):
    """(run, first output, environment) of the LiteRT side: the TFLite export of the same
    weights at the benchmark's fixed size, run by `runtimes` (LiteRT's interpreter on every
    core; CPU only)."""
    if job.device == "gpu":
        raise SpeedError("--device gpu: the LiteRT side runs on the CPU only")
    import ai_edge_litert

    from maffsrn_jax import runtimes
    from maffsrn_jax.export import export_tflite

    size = tuple(job.setting["size"])
    artifact, x = _exported(
        job, "litert",
        lambda m, v, path: export_tflite(m, v, path, precision="float32", input_size=size),
        ".tflite", runtimes.open_artifact)
    env = {"litert": getattr(ai_edge_litert, "__version__", "?"),
           "litert_threads": os.cpu_count() or 1}

    def run():
        return artifact.run(x)

    return run, run(), env


def _serve(conn, side: str, keep_freed: bool, job: Job) -> None:
    """A worker process: build one side's run, then time a turn on every 'round' message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # First, before any framework starts threads (see xla_options.tune_process).
    kept = setup_malloc(malloc_defaults=not keep_freed, platform=job.device)
    try:
        if side in JAX_SIDES:
            from maffsrn_jax import cpu_conv

            if side == "jax_xla_conv":  # read when the model is first traced
                os.environ[cpu_conv.OPT_OUT_ENV] = "0"
            run, first, env = _jax_run(job)
            env = {**env, f"{side}_cpu_kernels": cpu_conv.available()}
        elif side == "onnxruntime":
            run, first, env = _onnx_run(job)
        elif side == "litert":
            run, first, env = _litert_run(job)
        else:
            run, first, env = _torch_run(job, compiled=side == "torch_compile")
        conn.send(("ready", first, {**env, f"{side}_malloc_keeps_freed_memory": kept}))
        while (message := conn.recv())[0] == "round":
            _, steps, warmup = message
            conn.send(("done", *time_steps(run, steps, warmup)))
    except Exception as e:  # reported by the parent as one line
        name, line = type(e).__name__, first_line(e)
        detail = name if line == name else f"{name}: {line}"
        conn.send(("error", f"{side} worker: {detail}", None))
    finally:
        conn.close()


class Worker:
    """One framework's side of a benchmark, in a fresh (spawned) process."""

    def __init__(self, side: str, keep_freed: bool, job: Job):
        ctx = multiprocessing.get_context("spawn")  # fresh malloc state, no forked JAX
        self.side = side
        self.page_faults: list[float | None] = []  # minor page faults per step, each round
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, side, keep_freed, job))
        self._process.start()
        child.close()
        status, self.first, self.env = self._receive()
        if status != "ready":
            self.close()
            raise SpeedError(self.first)

    def _receive(self) -> Any:
        # The parent holds a copy of the child's pipe end until the child is reaped, so a
        # dead worker shows as a dead process, not as end-of-file.
        while not self._conn.poll(1.0):
            if not self._process.is_alive():
                code = self._process.exitcode
                raise SpeedError(f"the {self.side} worker died (exit code {code})")
        try:
            return self._conn.recv()
        except EOFError:
            raise SpeedError(f"the {self.side} worker died") from None

    def __call__(self, steps: int, warmup: int) -> list[float]:
        """One turn: the milliseconds of `steps` consecutive steps after `warmup` untimed."""
        self._conn.send(("round", steps, warmup))
        reply = self._receive()
        if reply[0] != "done":  # ("error", one-line message, None)
            raise SpeedError(reply[1])
        self.page_faults.append(reply[2])
        return reply[1]

    def close(self) -> None:
        try:
            self._conn.send(("stop",))
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs)))


def _median_or_none(xs: list[float | None]) -> int | None:
    return None if not xs or None in xs else round(_median(xs))


def ratio_key(kind: str, side: str) -> str:
    """JSON key of JAX's `kind` ('ratio' or 'ratio_of_pairs') against `side`: the plain
    name against eager PyTorch (the original schema), `<kind>_vs_<side>` against others."""
    return kind if side == "torch" else f"{kind}_vs_{side}"


def round_order(sides: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the sides' turns in each round: A B, B A, A B, ... (reversed every round)."""
    forward = list(sides)
    return [forward if r % 2 == 0 else forward[::-1] for r in range(rounds)]


def alternate(
    turns: dict[str, Callable[[int, int], list[float]]],
    rounds: int,
    steps: int,
    warmup: int = WARMUP,
    pause: float = 0.0,
) -> dict[str, Any]:
    """Times `turns` {'jax': ..., 'torch': ...[, others]} in rounds (see `round_order`).

    `turns[side](steps, warmup)` runs one side's turn and returns its `steps` step times
    (ms). Per side: the median of the per-round medians and their min-max; ratios are JAX
    over each other side, as the ratio of those medians and as the median of the per-round
    ratios. `pause` seconds of sleep come before each round, never between steps.
    """
    round_medians: dict[str, list[float]] = {side: [] for side in turns}
    all_ms: dict[str, list[float]] = {side: [] for side in turns}
    for order in round_order(list(turns), rounds):
        if pause:
            time.sleep(pause)
        for side in order:
            times = turns[side](steps, warmup)
            round_medians[side].append(_median(times))
            all_ms[side].extend(times)
    result: dict[str, Any] = {}
    for side, ms in round_medians.items():
        result[f"{side}_ms"] = round(_median(ms), 2)
        result[f"{side}_ms_range"] = [round(min(ms), 2), round(max(ms), 2)]
    for side in list(turns)[1:]:
        pairs = [j / t for j, t in zip(round_medians["jax"], round_medians[side], strict=True)]
        result[ratio_key("ratio", side)] = round(
            _median(round_medians["jax"]) / _median(round_medians[side]), 3
        )
        result[ratio_key("ratio_of_pairs", side)] = round(_median(pairs), 3)
    result.update(rounds=rounds, steps_per_round=steps, warmup_per_round=warmup)
    result["repeats"] = rounds  # the key's old readers: one value per side per round
    for side in turns:
        result[f"{side}_round_ms"] = [round(t, 2) for t in round_medians[side]]
        result[f"{side}_all_ms"] = [round(t, 2) for t in all_ms[side]]
    return result


def run_benchmarks(
    only: tuple[str, ...] = BENCHMARKS,
    rounds: int = 4,
    warmup: int = WARMUP,
    pause: float = 0.0,
    compiler_options: Options = None,
    xla_overrides: dict[str, Any] | None = None,
    jax_keeps_freed_memory: bool = True,
    torch_keeps_freed_memory: bool = False,
    settings: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
    device: str = "cpu",
    torch_compile: bool = False,
    *,
    steps: int = 5,
    onnx: bool = True,
    litert: bool = True,
    repeats: int | None = None,
    xla_conv_side: bool = False,
) -> dict[str, Any]:
    """Runs the selected benchmarks; returns {name: timings + setting, ..., 'environment'}.

    Each side runs in its own worker process and takes `rounds` turns of `warmup` untimed
    and `steps` timed consecutive steps (see the module docstring; `repeats`, the older
    name, sets `rounds`). `compiler_options` go to XLA for the JAX programs: None means the
    package's own (`xla_options.compiler_options()`), {} XLA's defaults; `xla_overrides`
    (as from `common.parse_xla_options`) are added to them. The JAX worker resolves both, so
    this process never starts a JAX client. `settings` replaces the issue's settings
    ({'inference': INFERENCE, 'train': TRAIN}) per benchmark. `device` is 'cpu' or 'gpu'.
    `onnx` and `litert` add the sides 'onnxruntime' and 'litert' (the model exported to
    ONNX, and to TFLite at the benchmark's size) to inference where they can run (else the
    reason is `<side>_skipped`); `torch_compile` adds 'torch_compile'; `xla_conv_side` adds
    'jax_xla_conv', JAX with XLA's own convolutions instead of `cpu_conv`'s kernels. A
    failure to build an optional side is recorded as `<side>_error` instead of its timings.
    """
    if device not in DEVICES:
        raise SpeedError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    rounds = rounds if repeats is None else repeats
    if rounds < 1 or steps < 1 or warmup < 0 or pause < 0:
        raise SpeedError("--rounds/--repeats and --steps must be >= 1, --warmup and "
                         "--pause >= 0")
    settings = {"inference": INFERENCE, "train": TRAIN, **(settings or {})}
    results: dict[str, Any] = {}
    environment: dict[str, Any] = {"cpu_count": os.cpu_count(), "pause_s": pause}
    for name in only:
        setting = settings[name]
        sides = list(SIDES)
        notes: dict[str, str] = {}
        for side, wanted in (("onnxruntime", onnx), ("litert", litert)):
            if wanted and name == "inference":
                missing = export_side_missing(side)
                if missing is None:
                    sides.append(side)
                else:
                    notes[f"{side}_skipped"] = missing
        if torch_compile:
            sides.append("torch_compile")
        if xla_conv_side:
            sides.append("jax_xla_conv")
        weights = initial_weights(setting, seed)
        job = Job(name, setting, weights, seed, compiler_options, dict(xla_overrides or {}), device)
        workers: dict[str, Worker] = {}
        try:
            for side in sides:  # one at a time: compiling is not what is timed
                try:
                    keep = (jax_keeps_freed_memory if side in JAX_SIDES
                            else torch_keeps_freed_memory)
                    framework = side in (*JAX_SIDES, "torch", "torch_compile")
                    workers[side] = Worker(side, keep and framework, job)
                except SpeedError as e:
                    if side not in OPTIONAL_SIDES:
                        raise
                    notes[f"{side}_error"] = str(e)
            result = alternate(dict(workers), rounds, steps, warmup, pause)
        finally:
            for worker in workers.values():
                worker.close()
        first = {side: np.asarray(w.first) for side, w in workers.items()}
        extra: dict[str, Any] = {
            f"{side}_page_faults_per_run": _median_or_none(w.page_faults)
            for side, w in workers.items()
        }
        for side in OPTIONAL_SIDES:
            if side in first:
                extra[f"agreement_{side}"] = float(np.abs(first["jax"] - first[side]).max())
        if name == "train":
            for side in workers:
                extra[f"{side}_steps_per_s"] = round(1e3 / result[f"{side}_ms"], 2)
        results[name] = {
            "setting": {**setting, "size": list(setting["size"])},
            "agreement": float(np.abs(first["jax"] - first["torch"]).max()),
            **result,
            **extra,
            **notes,
        }
        for worker in workers.values():
            environment.update(worker.env)
    results["environment"] = environment
    return results


_LABELS = {
    "jax": "JAX",
    "jax_xla_conv": "JAX, XLA convs",
    "torch": "PyTorch",
    "onnxruntime": "ONNX Runtime",
    "litert": "LiteRT",
    "torch_compile": "torch.compile",
}


def _ms(value: float) -> str:
    # Three significant digits for GPU-scale times, whole milliseconds for CPU-scale ones.
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def format_table(results: dict[str, Any]) -> str:
    benchmarks = [name for name in BENCHMARKS if name in results]
    sides = [s for s in _LABELS if any(f"{s}_ms" in results[n] for n in benchmarks)]
    others = sides[1:]
    header = ["benchmark", "setting"] + [f"{_LABELS[s]} ms (round medians min-max)" for s in sides]
    header += [f"JAX/{_LABELS[s]}" for s in others]
    header += [f"median pair ratio vs {_LABELS[s]}" for s in others]
    header += ["page faults per step " + " / ".join(_LABELS[s] for s in sides)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for name in benchmarks:
        r = results[name]
        s = r["setting"]
        cells = [name, f"x{s['scale']}, {s['batch']}x{s['size'][0]}x{s['size'][1]} LR"]
        for side in sides:
            if f"{side}_ms" not in r:
                cells.append("-")
                continue
            lo, hi = r[f"{side}_ms_range"]
            cells.append(f"{_ms(r[f'{side}_ms'])} ({_ms(lo)}-{_ms(hi)})")
        for key in ("ratio", "ratio_of_pairs"):
            for side in others:
                value = r.get(ratio_key(key, side))
                cells.append("-" if value is None else f"{value:.2f}x")
        cells.append(" / ".join(str(r.get(f"{side}_page_faults_per_run", "-")) for side in sides))
        rows.append("| " + " | ".join(cells) + " |")
        if name == "train":
            notes.append(
                "train steps/s: "
                + ", ".join(
                    f"{_LABELS[s]} {r[f'{s}_steps_per_s']:.1f}"
                    for s in sides
                    if f"{s}_steps_per_s" in r
                )
            )
        for side in OPTIONAL_SIDES:
            if f"{side}_error" in r:
                notes.append(f"{name}: {_LABELS[side]} failed: {r[f'{side}_error']}")
        for side in ("onnxruntime", "litert"):
            if f"{side}_skipped" in r:
                notes.append(f"{name}: {_LABELS[side]} skipped: {r[f'{side}_skipped']}")
    env = results["environment"]
    first = results[benchmarks[0]]
    rows.extend(notes)
    rows.append(
        f"\n{env['device']}, torch threads {env['torch_threads']}, "
        f"jax {env['jax']}, torch {env['torch']}, {first['rounds']} alternating rounds of "
        f"{first['warmup_per_round']} untimed + {first['steps_per_round']} timed steps, "
        f"{env['pause_s']} s pause"
        + (f", XLA options {env['xla_compiler_options']}" if env["xla_compiler_options"] else "")
        + "; malloc keeps freed memory: "
        + ", ".join(
            f"{label} {'yes' if env.get(f'{side}_malloc_keeps_freed_memory') else 'no'}"
            for side, label in (("jax", "JAX"), ("torch", "PyTorch"))
        )
        + "; AVX-512 kernels (cpu_conv): "
        + ", ".join(
            f"{_LABELS[side]} {'yes' if env[f'{side}_cpu_kernels'] else 'no'}"
            for side in JAX_SIDES
            if f"{side}_cpu_kernels" in env
        )
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m benchmarks.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", choices=BENCHMARKS, default=None, help="run one benchmark")
    p.add_argument("--rounds", type=int, default=None,
                   help="turns per side, in alternating order (default 4)")
    p.add_argument("--steps", type=int, default=5, help="timed consecutive steps per turn")
    p.add_argument("--warmup", type=int, default=WARMUP,
                   help=f"untimed steps at the start of a turn (default {WARMUP})")
    p.add_argument("--repeats", type=int, default=None, help="the older name of --rounds")
    p.add_argument("--pause", type=float, default=0.0,
                   help="seconds of sleep before each round (never between steps)")
    p.add_argument("--no-onnx", action="store_true", help="leave out the ONNX Runtime side")
    p.add_argument("--no-litert", action="store_true", help="leave out the LiteRT side")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--torch-keeps-freed-memory", action="store_true",
                   help="give the PyTorch worker the JAX worker's malloc setting")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="where both frameworks run (gpu: the first CUDA device)")
    p.add_argument("--inference-size", default=None, metavar="HxW",
                   help="LR size of the inference benchmark (default 256x256)")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time PyTorch with torch.compile(model), in a third worker")
    p.add_argument("--xla-conv-side", action="store_true",
                   help="also time JAX with XLA's own convolutions instead of the AVX-512 "
                        "kernels (MAFFSRN_JAX_CPU_CONV=0), in another worker")
    add_runtime_arguments(p)

    def body() -> None:
        args = p.parse_args(argv)
        if args.rounds is not None and args.repeats is not None and args.rounds != args.repeats:
            raise SpeedError("--repeats is the older name of --rounds: give one")
        rounds = args.rounds if args.rounds is not None else args.repeats
        rounds = 4 if rounds is None else rounds
        settings = {}
        if args.inference_size:
            size = parse_size(args.inference_size, "--inference-size")
            check_lr_size(size, "--inference-size")
            settings["inference"] = {**INFERENCE, "size": size}
        only = (args.only,) if args.only else BENCHMARKS
        results = run_benchmarks(
            only,
            rounds,
            args.warmup,
            args.pause,
            {} if args.xla_defaults else None,
            xla_overrides=parse_xla_options(args.xla_option),
            jax_keeps_freed_memory=not args.malloc_defaults,
            torch_keeps_freed_memory=args.torch_keeps_freed_memory,
            settings=settings,
            device=args.device,
            torch_compile=args.torch_compile,
            steps=args.steps,
            onnx=not args.no_onnx,
            litert=not args.no_litert,
            xla_conv_side=args.xla_conv_side,
        )
        print(format_table(results))
        if args.json:
            write_output(args.json, results)

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
