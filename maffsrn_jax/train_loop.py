"""The training loop: `train_and_evaluate(config, workdir)`, importable and testable in-process.

One call trains (or resumes) a model in `workdir`: data from `maffsrn_jax.data`, steps from
`maffsrn_jax.train_lib`, Orbax checkpoints in `workdir/checkpoints` (latest) and
`workdir/best` (best validation PSNR), `metrics.jsonl` and TensorBoard summaries. Running it
again on the same workdir resumes from the latest checkpoint and ends bit-identical to an
uninterrupted run. SIGTERM / Ctrl-C saves a checkpoint and raises `Interrupted`.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from maffsrn_jax import evaluation
from maffsrn_jax.errors import Error
from maffsrn_jax.files import write_atomic


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
    from maffsrn_jax.models import MIN_INPUT_SIZE

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
    the file reads as if the run had never stopped.
    """

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            write_atomic(path, "".join(line + "\n" for line in kept))
        self.file = open(path, "a") if enabled else None

    def write(self, record: dict[str, Any]) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

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
    """Trains (or resumes) in `workdir`; returns the final validation scores."""
    from flax import jax_utils

    from maffsrn_jax import checkpoints, data, train_lib
    from maffsrn_jax.convert import model_config

    check_config(config)
    workdir_p = Path(workdir)
    is_main = jax.process_index() == 0
    try:
        model = train_lib.model_from_config(config.model)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"--config.model: {e}") from e
    scale = model.scale

    # Data first: a missing dataset should fail before anything is compiled.
    train_ds, val_ds = data.get_datasets(config.data, scale, patch_size=config.patch_size)
    val_pairs = [val_ds.pair(i) for i in range(len(val_ds))]

    workdir_p.mkdir(parents=True, exist_ok=True)
    latest = checkpoints.manager(
        workdir_p / checkpoints.LATEST_DIR, max_to_keep=config.keep_checkpoints, async_save=True
    )
    best = checkpoints.manager(workdir_p / checkpoints.BEST_DIR, max_to_keep=1, best_metric="psnr")
    arch = model_config(model)

    schedule = train_lib.learning_rate_schedule(config)
    tx = train_lib.make_optimizer(config)
    params = train_lib.init_params(model, jax.random.key(config.seed))
    state = train_lib.create_train_state(params, tx)

    start_step = latest.latest_step()
    if start_step is not None:
        saved, saved_arch, _ = checkpoints.restore(workdir_p / checkpoints.LATEST_DIR, start_step)
        if saved_arch != arch:
            raise TrainingError(
                f"{workdir_p}: holds checkpoints of another architecture ({saved_arch}); "
                f"this config builds {arch}. Use a new --workdir."
            )
        import flax

        state = flax.serialization.from_state_dict(state, saved)
        logging.info("Resuming from %s at step %d.", workdir_p / checkpoints.LATEST_DIR, start_step)
    else:
        start_step = 0
        if config.init_from:
            state = state.replace(params=_init_from(config.init_from, state.params))
            state = train_lib.create_train_state(state.params, tx)

    train_iter = data.train_iterator(
        train_ds,
        start_step=start_step,
        seed=config.seed,
        global_batch_size=config.batch_size,
        patch_size=config.patch_size,
        scale=scale,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_threads=config.data.num_threads,
        prefetch=config.data.prefetch,
    )
    n_local = jax.local_device_count()
    device_iter = jax_utils.prefetch_to_device((train_lib.shard(b, n_local) for b in train_iter), 2)
    p_train_step = train_lib.make_p_train_step(model, tx, schedule)
    p_state = train_lib.replicate(state)

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir_p / "tensorboard"))
    log = MetricsLog(workdir_p / "metrics.jsonl", start_step, is_main)
    bicubic = bicubic_baseline(val_pairs, scale)

    stop_signal: dict[str, int | None] = {"sig": None}

    def on_signal(signum, _frame):
        stop_signal["sig"] = signum

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def save(step: int, host_state) -> None:
        checkpoints.save(latest, step, flax_state_dict(host_state), arch)

    def run_eval(step: int, host_state) -> dict[str, Any]:
        res = evaluate(model, host_state.params, val_pairs, scale, config.eval_tile)
        record = {
            "step": step,
            "val_psnr": res["psnr"],
            "val_ssim": res["ssim"],
            "bicubic_psnr": bicubic["psnr"],
            "bicubic_ssim": bicubic["ssim"],
        }
        log.write(record)
        if writer:
            writer.add_scalar("val/psnr", res["psnr"], step)
            writer.add_scalar("val/ssim", res["ssim"], step)
            for i in range(min(config.num_summary_images, len(val_pairs))):
                strip = summary_strip(res["sr"][i], bicubic["sr"][i], val_pairs[i][1])
                writer.add_image(f"val/{i}_sr_bicubic_hr", strip, step, dataformats="HWC")
        checkpoints.save(best, step, flax_state_dict(host_state), arch, {"psnr": res["psnr"]})
        return res

    from tqdm import tqdm

    progress = tqdm(
        total=config.num_train_steps,
        initial=start_step,
        disable=not is_main,
        dynamic_ncols=True,
        desc="train",
        file=sys.stdout,
    )
    step, window, t0, pending = start_step, [], time.time(), None
    result, stop_error = None, None
    try:
        while step < config.num_train_steps:
            batch = next(device_iter)
            p_state, metrics = p_train_step(p_state, batch)
            step += 1
            # Read the previous step's metrics only now, so the host never waits on the
            # device step it just dispatched.
            if pending is not None:
                window.append(_read(pending))
            pending = metrics
            if step % config.log_every_steps == 0 or step == config.num_train_steps:
                window.append(_read(pending))
                pending = None
                bad_run = int(train_lib.unreplicate_to_host(p_state.bad_run))
                _log_window(window, step, t0, log, writer, progress)
                window, t0 = [], time.time()
                if bad_run >= config.max_bad_steps:
                    stop_error = NonFiniteError(
                        f"stopped: the last {bad_run} steps had a non-finite loss or gradient "
                        f"(lower --config.learning_rate?); the last good checkpoint is kept in "
                        f"{workdir_p / checkpoints.LATEST_DIR}"
                    )
                    break
            progress.update(1)
            if _stop_requested(stop_signal):
                break
            if step % config.checkpoint_every_steps == 0 or step == config.num_train_steps:
                save(step, train_lib.unreplicate_to_host(p_state))
            if step % config.eval_every_steps == 0 or step == config.num_train_steps:
                result = run_eval(step, train_lib.unreplicate_to_host(p_state))
                progress.set_postfix_str(f"val PSNR {result['psnr']:.2f} dB")
        if _stop_requested(stop_signal) and stop_error is None:
            host_state = train_lib.unreplicate_to_host(p_state)
            save(int(host_state.step), host_state)
            name = signal.Signals(stop_signal["sig"] or signal.SIGTERM).name
            stop_error = Interrupted(
                f"{name}: saved a checkpoint at step {int(host_state.step)} in "
                f"{workdir_p / checkpoints.LATEST_DIR}; run the same command to resume"
            )
    finally:
        progress.close()
        latest.wait_until_finished()
        best.wait_until_finished()
        latest.close()
        best.close()
        log.close()
        if writer:
            writer.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        close = getattr(train_iter, "close", None)
        if close:
            close()

    if stop_error is not None:
        raise stop_error
    if result is None:  # resumed at the end: score the final weights once more
        result = evaluate(
            model, train_lib.unreplicate_to_host(p_state).params, val_pairs, scale, config.eval_tile
        )
    if is_main:
        _print_report(val_ds.names, scale, step, bicubic, result)
    return {
        "psnr": result["psnr"],
        "ssim": result["ssim"],
        "bicubic_psnr": bicubic["psnr"],
        "bicubic_ssim": bicubic["ssim"],
    }


class Interrupted(Exception):
    """SIGTERM or Ctrl-C: a checkpoint was saved; the message says where."""


def flax_state_dict(state) -> dict:
    import flax

    return flax.serialization.to_state_dict(state)


def _stop_requested(stop_signal: dict) -> bool:
    local = stop_signal["sig"] is not None
    if jax.process_count() == 1:
        return local
    # Every process must leave the loop at the same step, or the others hang in pmean.
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(local))))


def _read(metrics) -> dict[str, float]:
    from maffsrn_jax.train_lib import unreplicate_to_host

    return {k: float(v) for k, v in unreplicate_to_host(metrics).items()}


def _log_window(window, step, t0, log, writer, progress) -> None:
    good = [m for m in window if m["finite"]]
    record = {
        "step": step,
        "loss": float(np.mean([m["loss"] for m in good])) if good else float("nan"),
        "lr": window[-1]["lr"],
        "grad_norm": float(np.mean([m["grad_norm"] for m in good])) if good else float("nan"),
        "skipped_steps": len(window) - len(good),
        "steps_per_sec": len(window) / max(time.time() - t0, 1e-9),
    }
    log.write(record)
    if writer:
        for k in ("loss", "lr", "grad_norm", "steps_per_sec"):
            writer.add_scalar(f"train/{k}", record[k], step)
    if record["skipped_steps"]:
        logging.warning("step %d: skipped %d non-finite step(s)", step, record["skipped_steps"])
    progress.set_postfix(
        loss=f"{record['loss']:.4f}",
        lr=f"{record['lr']:.2e}",
        steps_s=f"{record['steps_per_sec']:.2f}",
    )


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
    from maffsrn_jax import train_lib
    from maffsrn_jax.convert import load_pretrained

    _, variables = load_pretrained(path)
    try:
        params, reinit = train_lib.load_init_params(params, variables["params"])
    except ValueError as e:
        raise TrainingError(f"--config.init_from={path}: does not fit this model: {e}") from e
    if reinit:
        logging.warning("init_from: %d tail tensor(s) of another scale re-initialised", len(reinit))
    return params
