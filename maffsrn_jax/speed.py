"""Side-by-side speed of this JAX model and the PyTorch reference, in one process.

    python -m maffsrn_jax.speed                      # both benchmarks, table on stdout
    python -m maffsrn_jax.speed --only inference --repeats 20 --json speed.json
    python -m maffsrn_jax.speed --xla-defaults       # JAX without the package's XLA options

Benchmarks (the issue's settings):
  inference   x4 MAFFSRN on one 256x256 LR image (the AIM 2020 setting); PyTorch in eval
              mode under `torch.inference_mode()`, JAX jitted.
  train       one x2 training step on a batch of 16 48x48 LR patches: forward, L1 loss,
              backward and an AdamP update (PyTorch: `adamp.AdamP`; JAX: the project's
              `train_lib` step with `optim.adamp`, state donated). Both read the same uint8
              batch and convert it to [0, 1] floats inside the step.

Both sides start from the same weights (the PyTorch model's initialisation, converted). The
runs alternate A/B, and the order flips every repetition (ABBA) so that a drifting machine
load hits both sides alike; `--pause` seconds of sleep before every run let the other
framework's worker threads go idle (both spin briefly after a run, which on a small machine
otherwise slows whichever side runs next). Reported: medians, min-max spread, the ratio of
medians JAX / PyTorch and the median of the per-repetition ratios.

Threads: PyTorch gets `torch.set_num_threads(os.cpu_count())`, the size of XLA:CPU's own
thread pool, so both use every core. Wall times, not CPU times, are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maffsrn_jax import convert, xla_options
from maffsrn_jax.profile import (
    TRAIN_LEARNING_RATE,
    ArgumentError,
    OneLineParser,
    ProfileError,
    add_xla_arguments,
    describe_device,
    make_train_step,
    random_batch,
    resolve_options,
    write_text_atomic,
)

BENCHMARKS = ("inference", "train")
INFERENCE = {"scale": 4, "batch": 1, "size": (256, 256)}
TRAIN = {"scale": 2, "batch": 16, "size": (48, 48)}

Pair = tuple[Callable[[], Any], Callable[[], Any], float]  # (jax_run, torch_run, agreement)
Options = dict[str, Any] | None


class SpeedError(ValueError):
    """A bad flag (reported as one line, exit status 2)."""


def _torch():
    try:
        import torch
    except ImportError as e:  # torch is an optional dependency of the package
        raise SpeedError("the PyTorch side needs torch (and adamp): pip install torch adamp") from e
    return torch


def inference_pair(seed: int = 0, compiler_options: Options = None) -> Pair:
    """(jax_run, torch_run, max |JAX - PyTorch| of the outputs) for the inference benchmark."""
    torch = _torch()
    from maffsrn_jax import torch_model

    torch.manual_seed(seed)
    net = torch_model.MAFFSRN(INFERENCE["scale"]).eval()
    model, variables = convert.torch_to_flax(net.state_dict())
    h, w = INFERENCE["size"]
    x = np.random.default_rng(seed).random((INFERENCE["batch"], h, w, 3), dtype=np.float32)
    x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    x_jax = jax.device_put(x)
    variables = jax.device_put(variables)
    forward = jax.jit(model.apply, compiler_options=xla_options.resolve(compiler_options))

    def jax_run():
        return forward(variables, x_jax).block_until_ready()

    def torch_run():
        with torch.inference_mode():
            return net(x_torch)

    diff = np.abs(np.asarray(jax_run()) - torch_run().permute(0, 2, 3, 1).numpy()).max()
    return jax_run, torch_run, float(diff)


def train_pair(seed: int = 0, compiler_options: Options = None) -> Pair:
    """(jax_run, torch_run, |loss difference| of the first step) for the train benchmark."""
    torch = _torch()
    try:
        from adamp import AdamP
    except ImportError as e:
        raise SpeedError("the PyTorch side needs adamp: pip install adamp") from e
    from maffsrn_jax import torch_model

    torch.manual_seed(seed)
    net = torch_model.MAFFSRN(TRAIN["scale"]).train()
    model, variables = convert.torch_to_flax(net.state_dict())
    optimizer = AdamP(net.parameters(), lr=TRAIN_LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8)
    batch = random_batch(TRAIN["batch"], TRAIN["size"], TRAIN["scale"], seed)
    lr_u8 = torch.from_numpy(batch["lr"]).permute(0, 3, 1, 2).contiguous()
    hr_u8 = torch.from_numpy(batch["hr"]).permute(0, 3, 1, 2).contiguous()

    init_state, step = make_train_step(model)
    holder = {"state": jax.jit(init_state)(jax.device_put(variables["params"]))}
    batch_jax = jax.device_put(batch)
    jitted = jax.jit(step, donate_argnums=0, compiler_options=xla_options.resolve(compiler_options))

    def jax_run():
        holder["state"], metrics = jitted(holder["state"], batch_jax)
        return jax.block_until_ready(metrics)["loss"]

    def torch_run():
        optimizer.zero_grad(set_to_none=True)
        sr = net(lr_u8.float() / 255.0)
        loss = (sr - hr_u8.float() / 255.0).abs().mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    diff = abs(float(jax_run()) - float(torch_run()))
    return jax_run, torch_run, diff


def _median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs)))


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
) -> dict[str, Any]:
    """Runs the selected benchmarks; returns {name: timings + setting, ..., 'environment'}.

    `compiler_options` go to XLA for the JAX programs only (`profile.parse_xla_options`);
    None means the package's own (`xla_options.compiler_options()`), {} XLA's defaults.
    """
    compiler_options = xla_options.resolve(compiler_options)
    torch = _torch()
    torch.set_num_threads(os.cpu_count() or 1)
    results: dict[str, Any] = {}
    settings = {"inference": INFERENCE, "train": TRAIN}
    for name in only:
        pair = inference_pair if name == "inference" else train_pair
        jax_run, torch_run, diff = pair(compiler_options=compiler_options)
        result = alternate(jax_run, torch_run, repeats, warmup, pause)
        setting = settings[name]
        results[name] = {
            "setting": {**setting, "size": list(setting["size"])},
            "agreement": diff,
            **result,
        }
    results["environment"] = {
        "jax": jax.__version__,
        "torch": torch.__version__,
        "device": describe_device(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "pause_s": pause,
        "jax_dtype": jnp.dtype(jnp.float32).name,
        "xla_compiler_options": compiler_options,
    }
    return results


def format_table(results: dict[str, Any]) -> str:
    rows = [
        "| benchmark | setting | JAX ms (min-max) | PyTorch ms (min-max) | JAX/PyTorch | "
        "median pair ratio |",
        "|---|---|---|---|---|---|",
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
            f"{r['ratio_of_pairs']:.2f}x |"
        )
    env = results["environment"]
    rows.append(
        f"\n{env['device']}, torch threads {env['torch_threads']}, "
        f"jax {env['jax']}, torch {env['torch']}, {results[next(iter(results))]['repeats']} "
        f"alternating repeats, {env['pause_s']} s pause"
        + (f", XLA options {env['xla_compiler_options']}" if env["xla_compiler_options"] else "")
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
    add_xla_arguments(p)
    try:
        args = p.parse_args(argv)
        if args.repeats < 1 or args.warmup < 0 or args.pause < 0:
            raise SpeedError("--repeats must be >= 1, --warmup and --pause >= 0")
        only = (args.only,) if args.only else BENCHMARKS
        options = resolve_options(args.xla_option, args.xla_defaults)
        results = run_benchmarks(only, args.repeats, args.warmup, args.pause, options)
    except (ArgumentError, SpeedError, ProfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
