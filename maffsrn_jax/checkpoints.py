"""Orbax checkpoint layout shared by train.py, the converter and `load_pretrained`.

A checkpoint directory is an Orbax `CheckpointManager` root whose step folders hold two
items: `state` (a pytree with at least `params`; training adds `opt_state`, `step`, ...)
and `model` (JSON: the MAFFSRN constructor fields), so a checkpoint says what it is.
train.py's workdir keeps the latest steps in `checkpoints/` and the best one in `best/`.
Orbax writes each step to a temporary folder and renames it when complete, so a crash
mid-save leaves the previous checkpoints usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from maffsrn_jax.errors import Error, first_line

STATE, MODEL = "state", "model"
LATEST_DIR, BEST_DIR = "checkpoints", "best"


class CheckpointError(Error):
    """A checkpoint that is missing, unreadable, or of another architecture."""


def manager(
    directory: str | os.PathLike,
    *,
    max_to_keep: int | None = None,
    best_metric: str | None = None,
    async_save: bool = False,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    """A CheckpointManager with this project's two items.

    With `best_metric`, it keeps the `max_to_keep` checkpoints with the highest metric.
    """
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        best_mode="max",
        keep_checkpoints_without_metrics=False,
        enable_async_checkpointing=async_save,
        create=not read_only,
        read_only=read_only,
        # Orbax warns when a read-only manager keeps a save interval; it has nothing to save.
        save_interval_steps=0 if read_only else 1,
    )
    return ocp.CheckpointManager(
        Path(directory).absolute(), options=options, item_names=(STATE, MODEL)
    )


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: Any,
    model_config: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    """Saves `state` (a pytree of arrays) and the model description at `step`."""
    mngr.save(
        step,
        args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), MODEL: ocp.args.JsonSave(model_config)}
        ),
        metrics=metrics,
        force=True,
    )


def resolve(path: str | os.PathLike) -> tuple[Path, int | None]:
    """Finds the manager root for `path` and the step it names, if any.

    Accepts a train.py workdir (uses its `checkpoints/`), a manager root, or one step folder.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint directory")
    if (p / LATEST_DIR).is_dir():
        p = p / LATEST_DIR
    if (p / STATE).is_dir() and (p / MODEL).exists() and p.name.isdigit():
        return p.parent, int(p.name)
    return p, None


def restore(
    path: str | os.PathLike, step: int | None = None, target: Any = None
) -> tuple[Any, dict[str, Any], int]:
    """Reads (state, model_config, step) from a checkpoint directory (latest step by default).

    Without `target`, `state` comes back as nested dicts of arrays. With a `target` pytree
    (e.g. a train state), it is restored into that structure.
    """
    root, named_step = resolve(path)
    step = named_step if step is None else step
    state_args = ocp.args.StandardRestore(target)  # None: restore as saved (nested dicts)
    # Orbax logs every restore at INFO and a read-only manager at WARNING ("Given directory
    # is read only"); a user loading weights should see one line, and real failures raise.
    with _absl_level(logging.ERROR):
        mngr = manager(root, read_only=True)
        try:
            steps = mngr.all_steps()
            if not steps:
                raise CheckpointError(
                    f"{root}: no checkpoint found (no step folders with state/ and model/)"
                )
            if step is None:
                step = max(steps)
            elif step not in steps:
                raise CheckpointError(
                    f"{root}: no checkpoint at step {step} (have {sorted(steps)})"
                )
            items = {STATE: state_args, MODEL: ocp.args.JsonRestore()}
            try:
                restored = mngr.restore(step, args=ocp.args.Composite(**items))
            except (ValueError, KeyError, FileNotFoundError, OSError) as e:
                raise CheckpointError(
                    f"{root}/{step}: unreadable checkpoint ({first_line(e)})"
                ) from e
        finally:
            mngr.close()
    return restored[STATE], dict(restored[MODEL]), step


@contextlib.contextmanager
def _absl_level(level: int) -> Iterator[None]:
    """Temporarily sets the level of the `absl` logger (which Orbax logs through)."""
    logger = logging.getLogger("absl")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
