"""Side-by-side speed of this JAX model and the PyTorch reference, on the same machine.

    python -m maffsrn_jax.speed                      # both benchmarks, table on stdout
    python -m maffsrn_jax.speed --only inference --repeats 20 --json speed.json
    python -m maffsrn_jax.speed --xla-defaults       # JAX without the package's XLA options
    python -m maffsrn_jax.speed --torch-keeps-freed-memory   # PyTorch with JAX's malloc setting

Benchmarks (the issue's settings):
  inference   x4 MAFFSRN on one 256x256 LR image (the AIM 2020 setting); PyTorch in eval
              mode under `torch.inference_mode()`, JAX jitted.
  train       one x2 training step on a batch of 16 48x48 LR patches: forward, L1 loss,
              backward and an AdamP update (PyTorch: `adamp.AdamP`; JAX: the project's
              `train_lib` step with `optim.adamp`, state donated). Both read the same uint8
              batch and convert it to [0, 1] floats inside the step.

Each framework runs in its own worker process, as each would in practice: neither shares
thread pools or malloc state with the other. The JAX worker starts like every entry point of
the package, making glibc's malloc keep freed memory (`xla_options.keep_freed_memory`;
`--malloc-defaults` skips that); the PyTorch worker keeps glibc's defaults, as the official
code runs, unless `--torch-keeps-freed-memory` (PyTorch's CPU tensors are not cached, so it
gains too, most in inference). Both start from the same weights (the PyTorch model's
initialisation, converted). The parent alternates the runs A/B and flips the order every
repetition (ABBA) so that a drifting machine load hits both sides alike; `--pause` seconds of
sleep before every run let the other side's threads go idle. Reported: medians, min-max
spread, the ratio of medians JAX / PyTorch and the median of the per-repetition ratios.

Threads: PyTorch gets `torch.set_num_threads(os.cpu_count())`, the size of XLA:CPU's own
thread pool, so both use every core. Wall times, not CPU times, are compared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maffsrn_jax.profile import (
    TRAIN_LEARNING_RATE,
    ArgumentError,
    OneLineParser,
    ProfileError,
    add_runtime_arguments,
    minor_page_faults,
    parse_xla_options,
    random_batch,
    setup_malloc,
    write_text_atomic,
)

BENCHMARKS = ("inference", "train")
SIDES = ("jax", "torch")
INFERENCE = {"scale": 4, "n_ffgs": 4, "batch": 1, "size": (256, 256)}
TRAIN = {"scale": 2, "n_ffgs": 4, "batch": 16, "size": (48, 48)}

Options = dict[str, Any] | None


class SpeedError(ValueError):
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


def _jax_run(
    name: str, setting: dict, weights: dict, seed: int, options: Options, overrides: dict
):
    """(run, first output, environment) of the JAX side, in the JAX worker."""
    import jax

    from maffsrn_jax import convert, xla_options
    from maffsrn_jax.profile import describe_device, make_train_step

    model, variables = convert.torch_to_flax(weights)
    options = {**xla_options.resolve(options), **overrides}
    env = {
        "jax": jax.__version__,
        "device": describe_device(),
        "jax_dtype": "float32",  # the benchmarks' compute dtype
        "xla_compiler_options": options,
    }
    b, (h, w) = setting["batch"], setting["size"]
    if name == "inference":
        x = jax.device_put(np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32))
        variables = jax.device_put(variables)
        forward = jax.jit(model.apply, compiler_options=options)

        def run():
            return forward(variables, x).block_until_ready()

        return run, np.asarray(run()), env

    init_state, step = make_train_step(model)
    holder = {"state": jax.jit(init_state)(jax.device_put(variables["params"]))}
    batch = jax.device_put(random_batch(b, (h, w), setting["scale"], seed))
    jitted = jax.jit(step, donate_argnums=0, compiler_options=options)

    def run():
        holder["state"], metrics = jitted(holder["state"], batch)
        return jax.block_until_ready(metrics)["loss"]

    return run, float(run()), env


def _torch_run(
    name: str, setting: dict, weights: dict, seed: int, options: Options, overrides: dict
):
    """(run, first output, environment) of the PyTorch side, in the PyTorch worker."""
    torch = _torch()
    from maffsrn_jax import torch_model

    torch.set_num_threads(os.cpu_count() or 1)
    env = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    net = torch_model.MAFFSRN(setting["scale"], n_ffgs=setting["n_ffgs"])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    b, (h, w) = setting["batch"], setting["size"]
    if name == "inference":
        x = np.random.default_rng(seed).random((b, h, w, 3), dtype=np.float32)
        x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        net.eval()

        def run():
            with torch.inference_mode():
                return net(x)

        return run, run().permute(0, 2, 3, 1).numpy(), env

    try:
        from adamp import AdamP
    except ImportError as e:
        raise SpeedError("the PyTorch side needs adamp: pip install adamp") from e
    net.train()
    optimizer = AdamP(net.parameters(), lr=TRAIN_LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
    batch = random_batch(b, (h, w), setting["scale"], seed)
    lr_u8 = torch.from_numpy(batch["lr"]).permute(0, 3, 1, 2).contiguous()
    hr_u8 = torch.from_numpy(batch["hr"]).permute(0, 3, 1, 2).contiguous()

    def run():
        optimizer.zero_grad(set_to_none=True)
        sr = net(lr_u8.float() / 255.0)
        loss = (sr - hr_u8.float() / 255.0).abs().mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return run, float(run()), env


def _serve(conn, side: str, keep_freed: bool, job: tuple) -> None:
    """A worker process: build one side's run, then run it on every 'run' message."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # First, before any framework starts threads (see xla_options.keep_freed_memory).
    kept = setup_malloc(malloc_defaults=not keep_freed)
    try:
        run, first, env = (_jax_run if side == "jax" else _torch_run)(*job)
        conn.send(("ready", first, {**env, f"{side}_malloc_keeps_freed_memory": kept}))
        while conn.recv() == "run":
            before = minor_page_faults()
            run()
            after = minor_page_faults()
            conn.send(("done", None if before is None or after is None else after - before))
    except Exception as e:  # reported by the parent as one line
        conn.send(("error", f"{side} worker: {type(e).__name__}: {e}", None))
    finally:
        conn.close()


class Worker:
    """One framework's side of a benchmark, in a fresh (spawned) process."""

    def __init__(self, side: str, keep_freed: bool, job: tuple):
        ctx = multiprocessing.get_context("spawn")  # fresh malloc state, no forked JAX
        self.side = side
        self.page_faults: list[int | None] = []  # minor page faults of each run, in order
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

    def __call__(self) -> None:
        self._conn.send("run")
        reply = self._receive()
        if reply[0] != "done":  # ("error", one-line message, None)
            raise SpeedError(reply[1])
        self.page_faults.append(reply[1])

    def close(self) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs)))


def _median_or_none(xs: list[int | None]) -> int | None:
    return None if not xs or None in xs else round(_median(xs))


def alternate(
    jax_run: Callable[[], Any],
    torch_run: Callable[[], Any],
    repeats: int,
    warmup: int = 2,
    pause: float = 0.2,
) -> dict[str, Any]:
    """Times the two runs alternately (ABBA order), `repeats` times each, in milliseconds."""
    for _ in range(warmup):
        jax_run()
        torch_run()
    times: dict[str, list[float]] = {"jax": [], "torch": []}
    runs = {"jax": jax_run, "torch": torch_run}
    for r in range(repeats):
        order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
        for side in order:
            time.sleep(pause)
            start = time.perf_counter()
            runs[side]()
            times[side].append((time.perf_counter() - start) * 1e3)
    pairs = [j / t for j, t in zip(times["jax"], times["torch"], strict=True)]
    return {
        "jax_ms": round(_median(times["jax"]), 2),
        "torch_ms": round(_median(times["torch"]), 2),
        "jax_ms_range": [round(min(times["jax"]), 2), round(max(times["jax"]), 2)],
        "torch_ms_range": [round(min(times["torch"]), 2), round(max(times["torch"]), 2)],
        "ratio": round(_median(times["jax"]) / _median(times["torch"]), 3),
        "ratio_of_pairs": round(_median(pairs), 3),
        "repeats": repeats,
        "jax_all_ms": [round(t, 2) for t in times["jax"]],
        "torch_all_ms": [round(t, 2) for t in times["torch"]],
    }


def run_benchmarks(
    only: tuple[str, ...] = BENCHMARKS,
    repeats: int = 10,
    warmup: int = 2,
    pause: float = 0.2,
    compiler_options: Options = None,
    xla_overrides: dict[str, Any] | None = None,
    jax_keeps_freed_memory: bool = True,
    torch_keeps_freed_memory: bool = False,
    settings: dict[str, dict[str, Any]] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Runs the selected benchmarks; returns {name: timings + setting, ..., 'environment'}.

    Each side runs in its own worker process (see the module docstring). `compiler_options`
    go to XLA for the JAX programs: None means the package's own
    (`xla_options.compiler_options()`), {} XLA's defaults; `xla_overrides` (as from
    `profile.parse_xla_options`) are added to them. The JAX worker resolves both, so this
    process never starts a JAX client. `settings` replaces the issue's settings
    ({'inference': INFERENCE, 'train': TRAIN}) per benchmark.
    """
    settings = {"inference": INFERENCE, "train": TRAIN, **(settings or {})}
    keep = {"jax": jax_keeps_freed_memory, "torch": torch_keeps_freed_memory}
    results: dict[str, Any] = {}
    environment: dict[str, Any] = {"cpu_count": os.cpu_count(), "pause_s": pause}
    for name in only:
        setting = settings[name]
        weights = initial_weights(setting, seed)
        job = (name, setting, weights, seed, compiler_options, dict(xla_overrides or {}))
        workers: dict[str, Worker] = {}
        try:
            for side in SIDES:  # one at a time: compiling is not what is timed
                workers[side] = Worker(side, keep[side], job)
            result = alternate(workers["jax"], workers["torch"], repeats, warmup, pause)
        finally:
            for worker in workers.values():
                worker.close()
        first = {side: np.asarray(w.first) for side, w in workers.items()}
        faults = {
            f"{side}_page_faults_per_run": _median_or_none(w.page_faults[-repeats:])
            for side, w in workers.items()
        }
        results[name] = {
            "setting": {**setting, "size": list(setting["size"])},
            "agreement": float(np.abs(first["jax"] - first["torch"]).max()),
            **result,
            **faults,
        }
        for worker in workers.values():
            environment.update(worker.env)
    results["environment"] = environment
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = [
        "| benchmark | setting | JAX ms (min-max) | PyTorch ms (min-max) | JAX/PyTorch | "
        "median pair ratio | page faults per run JAX / PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in BENCHMARKS:
        if name not in results:
            continue
        r = results[name]
        s = r["setting"]
        setting = f"x{s['scale']}, {s['batch']}x{s['size'][0]}x{s['size'][1]} LR"
        jr, tr = r["jax_ms_range"], r["torch_ms_range"]
        rows.append(
            f"| {name} | {setting} | {r['jax_ms']:.0f} ({jr[0]:.0f}-{jr[1]:.0f}) | "
            f"{r['torch_ms']:.0f} ({tr[0]:.0f}-{tr[1]:.0f}) | {r['ratio']:.2f}x | "
            f"{r['ratio_of_pairs']:.2f}x | {r['jax_page_faults_per_run']} / "
            f"{r['torch_page_faults_per_run']} |"
        )
    env = results["environment"]
    rows.append(
        f"\n{env['device']}, torch threads {env['torch_threads']}, "
        f"jax {env['jax']}, torch {env['torch']}, {results[next(iter(results))]['repeats']} "
        f"alternating repeats, {env['pause_s']} s pause"
        + (f", XLA options {env['xla_compiler_options']}" if env["xla_compiler_options"] else "")
        + "; malloc keeps freed memory: "
        + ", ".join(
            f"{label} {'yes' if env.get(f'{side}_malloc_keeps_freed_memory') else 'no'}"
            for side, label in (("jax", "JAX"), ("torch", "PyTorch"))
        )
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m maffsrn_jax.speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--only", choices=BENCHMARKS, default=None, help="run one benchmark")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per side")
    p.add_argument("--pause", type=float, default=0.2, help="seconds of sleep before each run")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--torch-keeps-freed-memory", action="store_true",
                   help="give the PyTorch worker the JAX worker's malloc setting")
    add_runtime_arguments(p)
    try:
        args = p.parse_args(argv)
        if args.repeats < 1 or args.warmup < 0 or args.pause < 0:
            raise SpeedError("--repeats must be >= 1, --warmup and --pause >= 0")
        only = (args.only,) if args.only else BENCHMARKS
        results = run_benchmarks(
            only,
            args.repeats,
            args.warmup,
            args.pause,
            {} if args.xla_defaults else None,
            xla_overrides=parse_xla_options(args.xla_option),
            jax_keeps_freed_memory=not args.malloc_defaults,
            torch_keeps_freed_memory=args.torch_keeps_freed_memory,
        )
    except (ArgumentError, SpeedError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (workers stopped, nothing written)", file=sys.stderr)
        return 130
    print(format_table(results))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
