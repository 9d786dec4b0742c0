"""The training loop: `train_and_evaluate(config, workdir)`, importable and testable in-process.

One call trains (or resumes) a model in `workdir`: data from `maffsrn_jax.data`, steps from
`maffsrn_jax.train_lib`, Orbax checkpoints in `workdir/checkpoints` (latest) and
`workdir/best` (best validation PSNR), `metrics.jsonl` and TensorBoard summaries. Running it
again on the same workdir resumes from the newest intact checkpoint and ends bit-identical to
an uninterrupted run, whatever stopped it: SIGTERM / Ctrl-C (a checkpoint is saved and
`Interrupted` raised), SIGKILL or a crash at any moment (unfinished checkpoint writes are
removed, damaged steps moved to `workdir/damaged/`, metrics lines past the resumed step or
torn mid-write dropped), or a full disk (`TrainingError` naming the checkpoint kept). A
second run on a workdir in use stops at once (`WorkdirBusy`). Each fault met on the way is
reported as one `warning:` line on stderr.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging as std_logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
from absl import logging
from flax import jax_utils
from tqdm import tqdm

from maffsrn_jax import checkpoints, data, evaluation, train_lib
from maffsrn_jax.convert import load_pretrained, model_config
from maffsrn_jax.errors import Error, first_line
from maffsrn_jax.files import write_atomic
from maffsrn_jax.models import MIN_INPUT_SIZE
from maffsrn_jax.workdir_lock import WorkdirLock


class TrainingError(Error, RuntimeError):
    """A run that cannot start or go on; the message is the whole story."""


class NonFiniteError(TrainingError):
    """`max_bad_steps` consecutive steps had a non-finite loss or gradient."""


# --------------------------------------------------------------------------- checks


def check_config(config: ml_collections.ConfigDict) -> None:
    """Everything that can be wrong with a config, before data loading or compilation."""
    n_dev = jax.device_count()
    if config.batch_size <= 0 or config.batch_size % n_dev:
        raise TrainingError(
            f"--config.batch_size={config.batch_size} is not divisible by the {n_dev} devices "
            f"of this run ({jax.process_count()} process(es) x {jax.local_device_count()})"
        )
    if config.patch_size < MIN_INPUT_SIZE:
        raise TrainingError(
            f"--config.patch_size={config.patch_size} is below the model's minimum input "
            f"{MIN_INPUT_SIZE}"
        )
    for field in (
        "num_train_steps",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "lr_decay_steps",
        "keep_checkpoints",
    ):
        if getattr(config, field) <= 0:
            raise TrainingError(f"--config.{field} must be positive, got {getattr(config, field)}")


# --------------------------------------------------------------------------- outputs


class MetricsLog:
    """`metrics.jsonl` (process 0): one JSON object per line, flushed as written.

    On resume, lines logged after the checkpoint being resumed are dropped (atomically), so
    the file reads as if the run had never stopped, and so is a line torn by a kill mid-write.
    """

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        self.records: list[dict[str, Any]] = []
        if enabled and path.exists():
            kept, torn = [], 0
            for line in path.read_text(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    torn += bool(line.strip())
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= resume_step:
                    kept.append(line)
                    self.records.append(record)
            if torn:
                warn(f"{path}: dropped {torn} torn line(s) (a write cut short); kept {len(kept)}")
            write_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a") if enabled else None

    def has(self, step: int, key: str) -> bool:
        """Whether a kept line of `step` holds `key` (e.g. whether step's evaluation is logged)."""
        return any(r.get("step") == step and key in r for r in self.records)

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as e:
                raise WriteFailed(self.path, "metrics", e) from e

    def close(self) -> None:
        if self.file:
            self.file.close()


# --------------------------------------------------------------------------- evaluation


def evaluate(model, params, pairs, scale: int, tile: int) -> dict[str, Any]:
    """PSNR/SSIM (Y, rounded, `scale` shaved: the literature's conventions) on uint8 pairs."""
    upscale = evaluation.array_upscaler(model, {"params": params}, tile=tile or None)
    return evaluation.score_pairs(upscale, pairs, scale)


def bicubic_baseline(pairs, scale: int) -> dict[str, Any]:
    return evaluation.score_pairs(evaluation.bicubic_upscaler(scale), pairs, scale)


def summary_strip(
    sr: np.ndarray, bicubic: np.ndarray, hr: np.ndarray, size: int = 96
) -> np.ndarray:
    """A centre crop of SR | bicubic | HR side by side, uint8 [size, 3 * size, 3]."""
    h, w = hr.shape[:2]
    size = min(size, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    crop = lambda im: im[top : top + size, left : left + size]
    return np.concatenate([crop(sr), crop(bicubic), crop(hr)], axis=1)


# --------------------------------------------------------------------------- training


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the final validation scores.

    Process 0 holds the workdir's lock for the whole run, taken before anything is read or
    written, so a second run on the same workdir raises `WorkdirBusy` and changes nothing.
    """
    check_config(config)
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    quiet, absl_logger = _QuietOrbaxErrors(), std_logging.getLogger("absl")
    absl_logger.addFilter(quiet)
    try:
        with lock:
            return _train_and_evaluate(config, Path(workdir))
    finally:
        absl_logger.removeFilter(quiet)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    try:
        model = train_lib.model_from_config(config.model)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"--config.model: {e}") from e

    # Data first: a missing dataset should fail before anything is compiled.
    train_ds, val_ds = data.get_datasets(config.data, model.scale, patch_size=config.patch_size)
    val_pairs = [val_ds.pair(i) for i in range(len(val_ds))]

    workdir.mkdir(parents=True, exist_ok=True)
    found = recover(workdir)  # before the checkpoint managers open the workdir
    tx = train_lib.make_optimizer(config)
    state = _initial_state(config, model, tx, found, workdir)
    start_step = int(state.step)

    train_iter = data.train_iterator(
        train_ds,
        start_step=start_step,
        seed=config.seed,
        global_batch_size=config.batch_size,
        patch_size=config.patch_size,
        scale=model.scale,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
    )
    outputs = _Outputs(config, model, workdir, val_pairs, start_step)
    failure, stop_error = None, None
    try:
        with _StopSignal() as stop:
            state, result, stop_error = _train(config, model, tx, state, train_iter, outputs,
                                               stop)
    except WriteFailed as e:
        failure = e
    finally:
        failure = outputs.close() or failure
        train_iter.close()

    if failure is not None:
        raise outputs.failure_error(failure) from failure
    if stop_error is not None:
        raise stop_error
    if result is None:  # resumed at the end: score the final weights once more
        result = evaluate(model, state.params, val_pairs, model.scale, config.eval_tile)
    if jax.process_index() == 0:
        _print_report(val_ds.names, model.scale, int(state.step), outputs.bicubic, result)
    return {
        "psnr": result["psnr"],
        "ssim": result["ssim"],
        "bicubic_psnr": outputs.bicubic["psnr"],
        "bicubic_ssim": outputs.bicubic["ssim"],
    }


def _initial_state(config, model, tx, found, workdir: Path) -> train_lib.TrainState:
    """The resumed state (`found`: `recover`'s newest intact checkpoint), else a fresh one."""
    params = train_lib.init_params(model, jax.random.key(config.seed))
    state = train_lib.create_train_state(params, tx)
    if found.step is not None:
        arch = model_config(model)
        if found.model_config != arch:
            raise TrainingError(
                f"{workdir}: holds checkpoints of another architecture ({found.model_config}); "
                f"this config builds {arch}. Use a new --workdir."
            )
        logging.info("Resuming from %s at step %d.", found.root, found.step)
        return flax.serialization.from_state_dict(state, found.state)
    if config.init_from:
        state = train_lib.create_train_state(_init_from(config.init_from, state.params), tx)
    return state


def _train(config, model, tx, state, train_iter, outputs: _Outputs, stop: _StopSignal):
    """The loop from `state` to `num_train_steps`: returns (host state, the last evaluation
    or None, the error that ended it early or None). Checkpoints, evaluations and logs go to
    `outputs` on their schedules."""
    n_local = jax.local_device_count()
    batches = jax_utils.prefetch_to_device((train_lib.shard(b, n_local) for b in train_iter), 2)
    p_train_step = train_lib.make_p_train_step(
        model, tx, train_lib.learning_rate_schedule(config))
    p_state = train_lib.replicate(state)
    step = start_step = int(state.step)
    result, stop_error = None, None
    progress = tqdm(total=config.num_train_steps, initial=start_step,
                    disable=jax.process_index() != 0, dynamic_ncols=True, desc="train",
                    file=sys.stdout)
    host = lambda: train_lib.unreplicate_to_host(p_state)
    due = lambda every: step % every == 0 or step == config.num_train_steps
    try:
        # A run killed between a checkpoint and its evaluation resumes at that step with the
        # evaluation (line and best checkpoint) missing: run it now, on the same weights.
        if _same_on_all_processes(start_step > 0 and due(config.eval_every_steps)
                                  and not outputs.log.has(start_step, "val_psnr")):
            result = outputs.evaluate(start_step, host())
        window, t0, pending = [], time.time(), None
        while step < config.num_train_steps:
            p_state, metrics = p_train_step(p_state, next(batches))
            step += 1
            # Read the previous step's metrics only now, so the host never waits on the
            # device step it just dispatched.
            if pending is not None:
                window.append(_read(pending))
            pending = metrics
            if due(config.log_every_steps):
                window.append(_read(pending))
                pending = None
                outputs.log_train(window, step, t0, progress)
                window, t0 = [], time.time()
                bad_run = int(train_lib.unreplicate_to_host(p_state.bad_run))
                if bad_run >= config.max_bad_steps:
                    stop_error = NonFiniteError(
                        f"stopped: the last {bad_run} steps had a non-finite loss or gradient "
                        f"(lower --config.learning_rate?); the last good checkpoint is kept in "
                        f"{outputs.latest_root}"
                    )
                    break
            progress.update(1)
            # Across processes the check is a collective: made at log steps only.
            if stop.requested(sync=due(config.log_every_steps)):
                break
            if due(config.checkpoint_every_steps):
                outputs.save(step, host())
            if due(config.eval_every_steps):
                result = outputs.evaluate(step, host())
                progress.set_postfix_str(f"val PSNR {result['psnr']:.2f} dB")
        if stop.requested() and stop_error is None:
            final = host()
            outputs.save(int(final.step), final)
            stop_error = Interrupted(
                f"{stop.name()}: saved a checkpoint at step {int(final.step)} in "
                f"{outputs.latest_root}; run the same command to resume"
            )
    finally:
        progress.close()
    return host(), result, stop_error


class _StopSignal:
    """SIGTERM / SIGINT while training: noted, acted on at the next step boundary."""

    def __enter__(self) -> _StopSignal:
        self.signum: int | None = None
        self._old = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, _frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def requested(self, sync: bool = True) -> bool:
        """Whether to stop now. One process reads its own signal at every step. Several must
        leave the loop at the same step, or the others hang in pmean: they agree through a
        collective, which only calls with `sync` make (every process at the same steps);
        the others return False."""
        local = self.signum is not None
        if jax.process_count() == 1:
            return local
        if not sync:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(local))))

    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name


class _Outputs:
    """What a run writes: checkpoints (`checkpoints/`, the latest; `best/`, by validation
    PSNR), `metrics.jsonl` and TensorBoard summaries (the last two on process 0)."""

    def __init__(self, config, model, workdir: Path, val_pairs, start_step: int):
        is_main = jax.process_index() == 0
        self.config, self.model, self.val_pairs = config, model, val_pairs
        self.arch = model_config(model)
        self.latest_root = workdir / checkpoints.LATEST_DIR
        self.best_root = workdir / checkpoints.BEST_DIR
        self.latest = checkpoints.manager(
            self.latest_root, max_to_keep=config.keep_checkpoints, async_save=True)
        self.best = checkpoints.manager(self.best_root, max_to_keep=1, best_metric="psnr")
        self.log = MetricsLog(workdir / "metrics.jsonl", start_step, is_main)
        self.writer = None
        if is_main:
            # Deferred: tensorboardX imports torch when torch is installed (seconds).
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))
        self.bicubic = bicubic_baseline(val_pairs, model.scale)

    def _save(self, mngr, root: Path, step: int, host_state, metrics=None) -> None:
        try:
            checkpoints.save(mngr, step, flax_state_dict(host_state), self.arch, metrics)
        except _WRITE_ERRORS as e:  # this save, or the previous async one, failed
            raise WriteFailed(root, "checkpoint", e) from e

    def save(self, step: int, host_state) -> None:
        self._save(self.latest, self.latest_root, step, host_state)

    def evaluate(self, step: int, host_state) -> dict[str, Any]:
        """Scores `host_state` on the validation pairs; logs it and keeps the best."""
        res = evaluate(self.model, host_state.params, self.val_pairs, self.model.scale,
                       self.config.eval_tile)
        # The best checkpoint first, the log line after: a logged evaluation implies its best
        # checkpoint, so a resume re-runs an evaluation exactly when its line is missing.
        if step not in self.best.all_steps():
            self._save(self.best, self.best_root, step, host_state, {"psnr": res["psnr"]})
        self.log.write({
            "step": step,
            "val_psnr": res["psnr"],
            "val_ssim": res["ssim"],
            "bicubic_psnr": self.bicubic["psnr"],
            "bicubic_ssim": self.bicubic["ssim"],
        })
        if self.writer:
            self.writer.add_scalar("val/psnr", res["psnr"], step)
            self.writer.add_scalar("val/ssim", res["ssim"], step)
            for i in range(min(self.config.num_summary_images, len(self.val_pairs))):
                strip = summary_strip(res["sr"][i], self.bicubic["sr"][i], self.val_pairs[i][1])
                self.writer.add_image(f"val/{i}_sr_bicubic_hr", strip, step, dataformats="HWC")
        return res

    def log_train(self, window: list[dict[str, float]], step: int, t0: float, progress) -> None:
        """One metrics line for the steps in `window` (their losses averaged, skips counted)."""
        good = [m for m in window if m["finite"]]
        mean = lambda k: float(np.mean([m[k] for m in good])) if good else float("nan")
        record = {
            "step": step,
            "loss": mean("loss"),
            "lr": window[-1]["lr"],
            "grad_norm": mean("grad_norm"),
            "skipped_steps": len(window) - len(good),
            "steps_per_sec": len(window) / max(time.time() - t0, 1e-9),
        }
        self.log.write(record)
        if self.writer:
            for k in ("loss", "lr", "grad_norm", "steps_per_sec"):
                self.writer.add_scalar(f"train/{k}", record[k], step)
        if record["skipped_steps"]:
            logging.warning("step %d: skipped %d non-finite step(s)", step,
                            record["skipped_steps"])
        progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                             steps_s=f"{record['steps_per_sec']:.2f}")

    def close(self) -> WriteFailed | None:
        """Waits for pending checkpoint writes and closes everything; the first failure."""
        failure = None
        for mngr, root in ((self.latest, self.latest_root), (self.best, self.best_root)):
            try:
                mngr.wait_until_finished()  # an async save's failure surfaces here
            except _WRITE_ERRORS as e:
                failure = failure or WriteFailed(root, "checkpoint", e)
            with contextlib.suppress(*_WRITE_ERRORS):
                mngr.close()
        try:
            self.log.close()
        except OSError as e:
            failure = failure or WriteFailed(self.log.path, "metrics", e)
        if self.writer:
            self.writer.close()
        return failure

    def failure_error(self, failure: WriteFailed) -> TrainingError:
        """The one line for a failed write: what failed and which checkpoint is kept."""
        root = self.latest_root
        kept = [s for s in checkpoints.step_dirs(root) if not checkpoints.step_problem(root, s)]
        what = f"kept the checkpoint at step {max(kept)}" if kept else "no checkpoint kept yet"
        return TrainingError(
            f"{failure.what} write to {failure.path} failed ({failure.reason}); {what} in "
            f"{root}; free space (or fix the workdir) and run the same command to resume"
        )


class Interrupted(Exception):
    """SIGTERM or Ctrl-C: a checkpoint was saved; the message says where."""


# Orbax and TensorStore report a failed write (disk full, file too large, permission) as
# OSError, or as ValueError / RuntimeError carrying the OS message.
_WRITE_ERRORS = (OSError, ValueError, RuntimeError)


class WriteFailed(Exception):
    """A checkpoint or metrics write failed; `train_and_evaluate` turns it into one line."""

    def __init__(self, path: Path, what: str, cause: BaseException):
        super().__init__(f"{path}: {cause}")
        self.path, self.what, self.cause = path, what, cause
        code = cause.errno if isinstance(cause, OSError) else None
        if code is None and (m := re.search(r"os_error_code='?(\d+)", str(cause))):
            code = int(m.group(1))  # TensorStore's report of a failed write
        if code:
            self.reason = os.strerror(code)
        else:
            self.reason = first_line(cause)
        if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            self.reason += ": the disk, quota or file size limit is full"


class _QuietOrbaxErrors(std_logging.Filter):
    """Drops Orbax's ERROR records (tracebacks of a failed background save) during a run.

    The failure reaches the loop as an exception and is reported there in one line.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (record.levelno >= std_logging.ERROR and "orbax" in record.pathname)


def warn(message: str) -> None:
    """One `warning:` line on stderr (process 0): a fault met and what was done about it."""
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


# How long the other processes wait for process 0 to finish `recover` (it reads checkpoints;
# on a slow shared disk that can take minutes) before deciding it has died or hung.
RECOVERY_TIMEOUT_S = 600.0
_RECOVERY_KEY = "maffsrn_jax/recover/{}"
_recoveries = 0  # per process: every process of a run calls `recover` equally often


def recover(workdir: Path, timeout_s: float = RECOVERY_TIMEOUT_S):
    """Makes `workdir`'s checkpoints resumable and reads the newest intact step.

    Process 0 removes unfinished checkpoint writes, skips damaged steps (moving them to
    `workdir/damaged/`, since the resumed run saves those step numbers again) and warns once
    per fault; the other processes then read the step it chose. Raises `TrainingError`,
    leaving everything in place, when steps exist but none is intact (on every process), and
    on the other processes when process 0 has not finished within `timeout_s` seconds (it
    died or hangs). Returns a `checkpoints.Scan` (`step` None: start afresh).
    """
    if jax.process_count() == 1:
        return _recover_here(workdir)
    global _recoveries
    _recoveries += 1
    key = _RECOVERY_KEY.format(_recoveries)
    if jax.process_index() == 0:
        try:
            found = _recover_here(workdir)
        except BaseException as e:
            _publish(key, {"error": str(e) if isinstance(e, Error) else None})
            raise
        _publish(key, {"step": found.step})
        return found
    outcome = _wait_for(key, timeout_s)
    if "error" in outcome:
        raise TrainingError(outcome["error"] or "process 0 failed while recovering "
                            f"{workdir}'s checkpoints; see its output")
    latest_root = workdir / checkpoints.LATEST_DIR
    if outcome["step"] is None:
        return checkpoints.Scan(root=latest_root, step=None)
    state, model_config, _ = checkpoints.restore(latest_root, outcome["step"])
    return checkpoints.Scan(latest_root, outcome["step"], state, model_config)


def _publish(key: str, value: dict[str, Any]) -> None:
    """Process 0's side of `_wait_for`, through JAX's distributed key-value store."""
    from jax._src import distributed

    distributed.global_state.client.key_value_set(key, json.dumps(value))


def _wait_for(key: str, timeout_s: float) -> dict[str, Any]:
    """What process 0 `_publish`es under `key`. Unlike a collective, the wait has a deadline,
    so a dead or stuck process 0 stops the others with one line instead of a hang."""
    from jax._src import distributed

    try:
        text = distributed.global_state.client.blocking_key_value_get(
            key, max(1, int(timeout_s * 1000)))
    except Exception as e:  # DEADLINE_EXCEEDED, or the coordinator gone with process 0
        raise TrainingError(
            f"process {jax.process_index()}: process 0 did not finish recovering the "
            f"checkpoints within {timeout_s:g} s (it stopped or hangs: "
            f"{first_line(e).split(' [type.googleapis.com', 1)[0]}); stopping"
        ) from None
    return json.loads(text)


def _recover_here(workdir: Path):
    """`recover`'s work, done by process 0 alone: cleans up, warns, reads the chosen step."""
    latest_root = workdir / checkpoints.LATEST_DIR
    best_root = workdir / checkpoints.BEST_DIR
    for root in (latest_root, best_root):
        removed = checkpoints.remove_unfinished(root)
        if removed:
            names = ", ".join(p.name for p in removed)
            warn(
                f"{root}: removed {len(removed)} unfinished checkpoint write(s) ({names}); "
                "the finished steps are kept"
            )
    found = checkpoints.scan(latest_root)
    if found.damaged and found.step is None:
        what = "; ".join(f"step {s}: {p}" for s, p in sorted(found.damaged.items()))
        raise TrainingError(
            f"{workdir}: no intact checkpoint to resume from ({what}); the damaged steps "
            f"are left in place in {latest_root}: move them away to start afresh"
        )
    for s, problem in sorted(found.damaged.items(), reverse=True):
        dest = checkpoints.move_aside(latest_root / str(s), workdir)
        if s > found.step:
            what = f"skipped it and resumed from step {found.step}"
        else:  # e.g. a removal of an old step (beyond keep_checkpoints) cut short
            what = f"older than step {found.step}, which the run resumes from"
        warn(f"{latest_root / str(s)}: damaged ({problem}); {what}; moved it to {dest}")
    best_found = checkpoints.scan(best_root)
    for s, problem in sorted(best_found.damaged.items(), reverse=True):
        dest = checkpoints.move_aside(best_root / str(s), workdir)
        warn(
            f"{best_root / str(s)}: damaged best checkpoint ({problem}); moved it to "
            f"{dest}; {best_root} keeps the evaluations still to come"
        )
    return found


def _same_on_all_processes(flag: bool) -> bool:
    """Process 0's `flag` everywhere (only it reads metrics.jsonl; saves are collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def flax_state_dict(state) -> dict:
    return flax.serialization.to_state_dict(state)


def _read(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in train_lib.unreplicate_to_host(metrics).items()}


def _print_report(names, scale, step, bicubic, result) -> None:
    print(f"\nHeld-out images, x{scale} (PSNR dB / SSIM on Y, {scale} px shaved):")
    print(f"  {'image':<24}{'bicubic':>18}{'MAFFSRN':>18}")
    for name, b, r in zip(names, bicubic["per_image"], result["per_image"], strict=True):
        print(f"  {name:<24}{b[0]:>10.2f} / {b[1]:.4f}{r[0]:>10.2f} / {r[1]:.4f}")
    print(
        f"  {'mean':<24}{bicubic['psnr']:>10.2f} / {bicubic['ssim']:.4f}"
        f"{result['psnr']:>10.2f} / {result['ssim']:.4f}"
    )
    print(f"MAFFSRN (step {step}) {result['psnr'] - bicubic['psnr']:+.2f} dB over bicubic.")


def _init_from(path: str, params):
    _, variables = load_pretrained(path)
    try:
        params, reinit = train_lib.load_init_params(params, variables["params"])
    except ValueError as e:
        raise TrainingError(f"--config.init_from={path}: does not fit this model: {e}") from e
    if reinit:
        logging.warning("init_from: %d tail tensor(s) of another scale re-initialised", len(reinit))
    return params
