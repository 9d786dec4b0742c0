"""What the profiling and speed commands share: flags, sizes, the benchmark train step.

Nothing here is a command; `tools.profile`, `tools.speed` and `tools.bench` are.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maffsrn_jax import xla_options
from maffsrn_jax.errors import Error
from maffsrn_jax.files import write_atomic, write_json_atomic
from maffsrn_jax.models import MIN_INPUT_SIZE

TRAIN_LEARNING_RATE = 2e-4  # the paper's; the value does not change the cost of a step

__all__ = [
    "TRAIN_LEARNING_RATE",
    "ArgumentError",
    "OneLineParser",
    "ProfileError",
    "add_runtime_arguments",
    "check_lr_size",
    "describe_device",
    "make_train_step",
    "minor_page_faults",
    "parse_size",
    "parse_xla_options",
    "random_batch",
    "resolve_options",
    "setup_malloc",
    "write_json_report",
    "write_text_atomic",
]


class ProfileError(Error):
    """A bad flag, size or model description (reported as one line, exit status 2)."""


class ArgumentError(Error):
    """A flag argparse rejected (reported as one line, exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise `ArgumentError` instead of printing the usage block."""

    def error(self, message: str):
        raise ArgumentError(message)


# --- the benchmark programs -----------------------------------------------------------------


def make_train_step(model: Any) -> tuple[Callable[[Any], Any], Callable[..., Any]]:
    """(init_state(params) -> state, train_step(state, batch) -> (state, metrics)).

    The project's train step (`train_lib`: L1 loss + AdamP, non-finite steps skipped) on one
    device, with the paper's AdamP settings. The batch is {'lr': uint8 [B, h, w, 3], 'hr':
    uint8 [B, sh, sw, 3]}. The step is not jitted here.
    """
    import optax

    from maffsrn_jax import train_lib
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


# --- what reports say about the process and the device --------------------------------------


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (getrusage), or None where unsupported."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def describe_device() -> str:
    """'cpu (2 cores)' or e.g. 'gpu: NVIDIA H100 80GB HBM3 (x1)', for reports."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu ({os.cpu_count()} cores)"
    return f"{device.platform}: {device.device_kind} (x{jax.device_count()})"


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` to `path` (its folder made if need be) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def write_json_report(path: str | os.PathLike, report: Any) -> None:
    """A command's --json report, as `files.write_json_atomic` writes JSON (folder made if
    need be)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, report)


# --- flags ----------------------------------------------------------------------------------


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


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--xla-option / --xla-defaults (read back by `resolve_options`) and --malloc-defaults."""
    p.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                   help="XLA compiler option for the JAX programs (repeatable)")
    p.add_argument("--xla-defaults", action="store_true",
                   help="start from XLA's defaults instead of maffsrn_jax.xla_options")
    p.add_argument("--malloc-defaults", action="store_true",
                   help="leave glibc's malloc as it is (no xla_options.keep_freed_memory)")


def resolve_options(items: Sequence[str], xla_defaults: bool) -> dict[str, Any]:
    """The package's compiler options (XLA's defaults with `xla_defaults`), + --xla-option."""
    base = xla_options.resolve({} if xla_defaults else None)
    return {**base, **parse_xla_options(items)}


def setup_malloc(malloc_defaults: bool) -> bool:
    """What every entry point does first: `keep_freed_memory()` unless --malloc-defaults.

    Returns whether freed memory is kept (False with --malloc-defaults or off glibc).
    """
    return False if malloc_defaults else xla_options.keep_freed_memory()
