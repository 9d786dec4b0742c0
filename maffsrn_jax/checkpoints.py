"""Orbax checkpoint layout shared by train.py, the converter and `load_pretrained`.

A checkpoint directory is an Orbax `CheckpointManager` root whose step folders hold two
items: `state` (a pytree with at least `params`; training adds `opt_state`, `step`, ...)
and `model` (JSON: the MAFFSRN constructor fields), so a checkpoint says what it is.
train.py's workdir keeps the latest steps in `checkpoints/` and the best one in `best/`.
Orbax writes each step to a temporary folder (`<step>.orbax-checkpoint-tmp-*`), puts a
`commit_success.txt` marker in it and renames it when complete, so a crash mid-save leaves
the previous checkpoints usable. `scan` finds the newest step that is whole and readable
(a step folder without its marker, or with a file truncated, deleted or overwritten, is
damaged), which is where a run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from maffsrn_jax.errors import Error, first_line

STATE, MODEL = "state", "model"
LATEST_DIR, BEST_DIR = "checkpoints", "best"
COMMIT_MARKER = "commit_success.txt"  # Orbax writes it last, before the rename
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # an unfinished write: `<step>.orbax-checkpoint-tmp-<n>`
DAMAGED_DIR = "damaged"  # where train.py moves damaged steps aside, in the workdir


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

    With `best_metric`, it keeps the `max_to_keep` checkpoints with the highest metric. A
    `read_only` one belongs to this process alone: in a multi-host run process 0 reads the
    checkpoints by itself while the others wait (`train_loop.recover`), so it must not wait
    for them at Orbax's barriers.
    """
    alone = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()})
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
        **({"multiprocessing_options": alone} if read_only else {}),
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
    if p.name.isdigit() and any((p / n).exists() for n in (STATE, MODEL, COMMIT_MARKER)):
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
    if step is None and (dirs := step_dirs(root)):
        step = max(dirs)  # the newest step, damaged or not: loading an older one is a choice
    if step is not None and (root / str(step)).is_dir() and (problem := step_problem(root, step)):
        raise CheckpointError(f"{root / str(step)}: damaged checkpoint ({problem})")
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
                with _quiet_failed_reads():
                    restored = mngr.restore(step, args=ocp.args.Composite(**items))
            except (ValueError, KeyError, FileNotFoundError, OSError) as e:
                raise CheckpointError(
                    f"{root}/{step}: unreadable checkpoint ({_short(first_line(e))})"
                ) from e
        finally:
            mngr.close()
    return restored[STATE], dict(restored[MODEL]), step


def step_dirs(root: str | os.PathLike) -> dict[int, Path]:
    """The finished step folders (named by their step number) under a manager root."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {int(p.name): p for p in root.iterdir() if p.name.isdigit() and p.is_dir()}


def unfinished_writes(root: str | os.PathLike) -> list[Path]:
    """Temporary step folders of saves that never finished (the writer was killed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if TMP_SUFFIX in p.name)


def step_problem(root: str | os.PathLike, step: int) -> str | None:
    """What is structurally wrong with step folder `root/step` (None: nothing visible).

    Cheap checks only (the commit marker and both items); `scan` also reads the step.
    """
    d = Path(root) / str(step)
    if not d.is_dir():
        return "no such step folder"
    if not (d / COMMIT_MARKER).is_file():
        return f"no {COMMIT_MARKER}: its write never finished"
    for item in (STATE, MODEL):
        if not (d / item).is_dir():
            return f"its {item}/ folder is missing"
    return None


@dataclasses.dataclass
class Scan:
    """The outcome of `scan`: the newest intact step (None: none) and what was passed over."""

    root: Path
    step: int | None
    state: Any = None
    model_config: dict[str, Any] | None = None
    damaged: dict[int, str] = dataclasses.field(default_factory=dict)  # step -> what is wrong


def scan(root: str | os.PathLike) -> Scan:
    """Reads the newest step under `root` that restores cleanly, noting every damaged step.

    A step counts as intact only if it has its commit marker and both items restore: Orbax's
    OCDBT store checksums what it reads, so a truncated, deleted or overwritten file shows
    up as a failed restore. Older steps than the intact one are checked only cheaply.
    """
    root = Path(root)
    result = Scan(root=root, step=None)
    for step in sorted(step_dirs(root), reverse=True):
        problem = step_problem(root, step)
        if problem is None and result.step is None:
            try:
                result.state, result.model_config, _ = restore(root, step)
                result.step = step
            except CheckpointError as e:
                problem = str(e).split(": ", 1)[-1]
        if problem is not None:
            result.damaged[step] = problem
    return result


def move_aside(step_dir: Path, workdir: str | os.PathLike) -> Path:
    """Moves a damaged step folder to `workdir/damaged/` (kept for a person to inspect).

    A resumed run saves the same step numbers again, so the damaged folder cannot stay
    where it is; moving it keeps it without letting Orbax see or delete it.
    """
    dest_dir = Path(workdir) / DAMAGED_DIR
    dest_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = dest_dir / f"{step_dir.parent.name}-{step_dir.name}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest_dir / f"{step_dir.parent.name}-{step_dir.name}-{stamp}-{n}"
    shutil.move(str(step_dir), str(dest))
    return dest


def remove_unfinished(root: str | os.PathLike) -> list[Path]:
    """Deletes the temporary folders of saves that never finished; returns what it deleted.

    They never received their commit marker, so they hold nothing a resume could use.
    """
    removed = unfinished_writes(root)
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[None]:
    """Silences, for one restore, the reads its failure leaves in flight.

    When one read of a damaged step fails, Orbax closes its event loop while TensorStore
    still completes the step's other reads. Each of them then fails after the failure was
    reported in one line, in one of two ways: the completion cannot reach the closed loop
    ("Event loop is closed", printed through `sys.unraisablehook`), or the read's task is
    garbage-collected holding its error and asyncio logs "Task exception was never retrieved"
    with a traceback. Only those two are dropped, and only until the context exits: after a
    failure it first waits for the stragglers (they arrive within milliseconds of it) and
    collects the failed tasks, then puts the hook and the asyncio logger back as they were.
    A restore that succeeds leaves neither.
    """
    previous = sys.unraisablehook
    last_drop = [time.monotonic()]

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            last_drop[0] = time.monotonic()
            return
        previous(unraisable)

    asyncio_logger = logging.getLogger("asyncio")
    sys.unraisablehook = hook
    asyncio_logger.addFilter(_drop_unretrieved_tensorstore_errors)
    try:
        yield
    except BaseException:
        _settle(last_drop)
        raise
    finally:
        if sys.unraisablehook is hook:  # else someone replaced it meanwhile: theirs stays
            sys.unraisablehook = previous
        asyncio_logger.removeFilter(_drop_unretrieved_tensorstore_errors)


# After a failed restore: how long without a straggler counts as all of them in, and the most
# a failure waits for that (the reads are of local files; a busy machine slows them).
_QUIET_S, _SETTLE_MAX_S = 0.2, 3.0


def _settle(last_drop: list[float]) -> None:
    """Waits until the reads a failed restore left in flight have all failed, then collects
    their tasks, so that both kinds of noise reach `_quiet_failed_reads` while it listens."""
    start = time.monotonic()
    while time.monotonic() - start < _SETTLE_MAX_S:
        if time.monotonic() - max(last_drop[0], start) >= _QUIET_S:
            break
        time.sleep(_QUIET_S / 4)
    gc.collect()  # a failed read's task logs its unretrieved error when it is collected


def _drop_unretrieved_tensorstore_errors(record: logging.LogRecord) -> bool:
    """False for asyncio's report of a TensorStore read error nobody awaited."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and "tensorstore_spec=" in str(exc))


def _short(message: str) -> str:
    """A TensorStore error without the JSON spec it appends (hundreds of characters)."""
    return re.sub(r"\s*\[tensorstore_spec='.*?'\]", "", message)


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
