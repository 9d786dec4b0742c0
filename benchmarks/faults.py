"""Fault injection: `python -m benchmarks.bench faults --kills N [--seed S]`, from a checkout.

Trains a tiny model with the checkout's train.py in a temporary workdir and, on a schedule
drawn from the seed, kills it with SIGKILL N times: during start-up and compilation, between
steps, inside an asynchronous checkpoint write (the moment its
`<step>.orbax-checkpoint-tmp-*` folder appears) and during evaluation, rerunning the same
command after each kill. Then it damages
the newest checkpoint once (a file truncated, deleted or overwritten, or the commit marker
removed), starts the final run and, while that run holds the workdir, a second run of the
same command, which must be turned away. Finally it compares the final checkpoint (weights,
optimizer state, step) with an uninterrupted run of the same command, and metrics.jsonl
with that run's steps. One line per fault, then

    faults survived: K/N, weights identical: yes|no

where N is the number of kills asked for and K those delivered whose restart went on
without error; the damaged checkpoint and the second run have a line of their own just
before it. Exit status 0 when every fault was survived (the damaged checkpoint skipped and
reported, the second run turned away) and the weights are identical, 1 otherwise. XLA
compilations are cached in the temporary folder (JAX_COMPILATION_CACHE_DIR), so a restart
costs start-up time only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maffsrn_jax.errors import Error

REPO = Path(__file__).resolve().parents[1]  # the checkout this folder is in
KINDS = ("startup", "steps", "checkpoint-write", "evaluation")
CORRUPTIONS = ("truncate", "delete", "garbage", "no-commit-marker")
TMP_SUFFIX = ".orbax-checkpoint-tmp"
EVAL_EVERY = 5


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Registers the `faults` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "faults",
        help="SIGKILL train.py N times, damage a checkpoint, start it twice; compare weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--kills", type=int, required=True, help="number of SIGKILLs")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--steps", type=int, default=0, help="training steps (default: 2 * kills + 6)")
    p.add_argument("--keep", default="", help="keep the workdirs in this folder")
    p.set_defaults(func=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["faults", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


def say(line: str) -> None:
    print(line, flush=True)


class Trainer:
    """train.py on a tiny config in one workdir: start, watch, kill."""

    def __init__(self, root: Path, workdir: Path, steps: int):
        self.root, self.workdir, self.steps = root, workdir, steps
        self.env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        self.env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
        self.env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "xla-cache"))
        self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        self.runs = 0

    def command(self) -> list[str]:
        images = self.root / "images"
        return [
            sys.executable,
            str(REPO / "train.py"),
            "--config",
            str(REPO / "configs" / "quickstart.py"),
            "--workdir",
            str(self.workdir),
            "--config.data.source=folder",
            f"--config.data.dir={images}",
            f"--config.data.cache_dir={self.root / 'data-cache'}",
            "--config.data.num_threads=1",
            "--config.model.n_ffgs=1",
            "--config.model.n_mabs=1",
            "--config.model.fusion=hff",
            "--config.batch_size=2",
            "--config.patch_size=16",
            f"--config.num_train_steps={self.steps}",
            "--config.log_every_steps=1",
            f"--config.eval_every_steps={EVAL_EVERY}",
            "--config.checkpoint_every_steps=1",
            "--config.keep_checkpoints=2",
        ]

    def start(self) -> subprocess.Popen:
        self.runs += 1
        log = self.root / "logs" / f"{self.workdir.name}-{self.runs}.txt"
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as out:
            proc = subprocess.Popen(
                self.command(), cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        proc.log = log  # type: ignore[attr-defined]
        return proc

    def logged_steps(self) -> list[int]:
        path = self.workdir / "metrics.jsonl"
        steps = []
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "loss" in record:
                steps.append(record["step"])
        return steps

    def tmp_dirs(self) -> list[str]:
        try:
            with os.scandir(self.workdir / "checkpoints") as it:
                return [e.name for e in it if TMP_SUFFIX in e.name]
        except OSError:
            return []

    def finished_steps(self) -> list[int]:
        """The step folders with their commit marker."""
        d = self.workdir / "checkpoints"
        try:
            dirs = list(d.iterdir())
        except OSError:
            return []
        return sorted(
            int(p.name) for p in dirs if p.name.isdigit() and (p / "commit_success.txt").exists()
        )

    def kept_step(self) -> int | None:
        """The newest finished step folder (what a restart tries first)."""
        steps = self.finished_steps()
        return steps[-1] if steps else None


def warnings_and_errors(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [ln for ln in text.splitlines() if ln.startswith(("warning:", "error:"))]


def make_images(folder: Path, count: int = 4, size: int = 48) -> None:
    """`count` smooth, slightly noisy size x size photographs-to-be: a tiny training set."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / float(size)
    for i in range(count):
        f = rng.uniform(1, 4, (3, 2))
        img = np.stack([np.sin(2 * np.pi * (f[c, 0] * yy + f[c, 1] * xx)) for c in range(3)], -1)
        img = (img * 100 + 128 + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")


def schedule(kills: int, seed: int) -> list[dict[str, Any]]:
    """The seeded kill moments; at least one inside a checkpoint write."""
    rng = np.random.default_rng(seed)
    kinds = [str(rng.choice(KINDS)) for _ in range(kills)]
    if kills and "checkpoint-write" not in kinds:
        kinds[int(rng.integers(kills))] = "checkpoint-write"
    plan = []
    for kind in kinds:
        plan.append(
            {
                "kind": kind,
                "fraction": float(rng.uniform(0.05, 1.0)),  # of the start-up time
                "steps": int(rng.integers(1, 3)),
                "delay": float(rng.uniform(0.0, 0.3)),
            }
        )
    return plan


def kill_at(trainer: Trainer, proc: subprocess.Popen, moment: dict, startup_s: float) -> str:
    """Waits for `moment`, SIGKILLs `proc`; returns where it landed ('' if the run ended)."""
    t0 = time.monotonic()
    base = max(trainer.logged_steps(), default=0)
    deadline = t0 + 300
    kind = moment["kind"]
    where = ""
    while time.monotonic() < deadline and proc.poll() is None:
        if kind == "startup":
            # Start-up ends at the first step; a kill not due by then lands right there.
            if max(trainer.logged_steps(), default=0) > base:
                where = "at the end of start-up (first step logged)"
                break
            if time.monotonic() - t0 >= moment["fraction"] * startup_s:
                where = f"during start-up / compilation ({time.monotonic() - t0:.1f}s after launch)"
                break
            time.sleep(0.01)
        elif kind == "steps":
            if max(trainer.logged_steps(), default=0) >= base + moment["steps"]:
                time.sleep(moment["delay"])
                where = f"between steps (step {max(trainer.logged_steps(), default=0)} logged)"
                break
            time.sleep(0.01)
        elif kind == "checkpoint-write":
            # Only once this run has trained a step: a temporary folder seen earlier may be
            # the killed run's leftover, which the restart removes.
            tmp = trainer.tmp_dirs() if max(trainer.logged_steps(), default=0) > base else []
            if tmp:
                where = f"inside a checkpoint write ({tmp[0]})"
                break
            time.sleep(0.002)
        else:  # evaluation: it starts once the step's checkpoint write has been started
            last = max(trainer.logged_steps(), default=0)
            started = (trainer.workdir / "checkpoints" / str(last)).exists() or any(
                n.startswith(f"{last}.") for n in trainer.tmp_dirs()
            )
            if last > base and last % EVAL_EVERY == 0 and started:
                time.sleep(moment["delay"])
                where = f"during the evaluation at step {last}"
                break
            time.sleep(0.005)
    if proc.poll() is not None:
        return ""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return where


def corrupt(workdir: Path, rng: np.random.Generator) -> str:
    """Damages the newest step folder one seeded way; returns what it did."""
    root = workdir / "checkpoints"
    step = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
    d = root / str(step)
    how = str(rng.choice(CORRUPTIONS))
    if how == "no-commit-marker":
        (d / "commit_success.txt").unlink()
        return f"removed the commit marker of {d}"
    files = sorted(
        [d / "state" / "manifest.ocdbt", d / "state" / "_METADATA", d / "model" / "metadata"]
        + list((d / "state" / "d").glob("*"))
    )
    target = files[int(rng.integers(len(files)))]
    size = target.stat().st_size
    if how == "truncate":
        with open(target, "r+b") as f:
            f.truncate(size // 2)
        return f"truncated {target} ({size} -> {size // 2} bytes)"
    if how == "delete":
        target.unlink()
        return f"deleted {target}"
    target.write_bytes(rng.bytes(size))
    return f"overwrote {target} with {size} random bytes"


def compare(a: Path, b: Path) -> tuple[bool, str]:
    """Whether the newest checkpoints of workdirs `a` and `b` hold bit-identical states."""
    import jax

    from maffsrn_jax import checkpoints

    sa, _, step_a = checkpoints.restore(a)
    sb, _, step_b = checkpoints.restore(b)
    la = jax.tree_util.tree_leaves_with_path(sa)
    lb = jax.tree_util.tree_leaves_with_path(sb)
    if step_a != step_b or [p for p, _ in la] != [p for p, _ in lb]:
        return False, f"steps {step_a} vs {step_b}, {len(la)} vs {len(lb)} arrays"
    diff = [
        jax.tree_util.keystr(p)
        for (p, x), (_, y) in zip(la, lb, strict=True)
        if not np.array_equal(np.asarray(x), np.asarray(y))
    ]
    what = f"step {step_a}, {len(la)} arrays (weights, optimizer state, counters)"
    return not diff, what + (f", differ: {', '.join(diff[:5])}" if diff else "")


def metrics_lines(workdir: Path) -> list[tuple[int, str]]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], "val" if "val_psnr" in r else "train") for r in map(json.loads, lines)]


def run(args: argparse.Namespace) -> int:
    """The `faults` subcommand."""
    if args.kills < 0:
        raise Error("--kills must be >= 0")
    if not (REPO / "train.py").exists():
        raise Error(f"{REPO / 'train.py'}: not found (run from a checkout)")
    steps = args.steps or 2 * args.kills + 6
    root = Path(args.keep or tempfile.mkdtemp(prefix="maffsrn-faults-"))
    root.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    try:
        return _run(args, root, steps, t_start)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace, root: Path, steps: int, t_start: float) -> int:
    make_images(root / "images")
    plan = schedule(args.kills, args.seed)
    say(
        f"schedule (seed {args.seed}, {steps} steps, checkpoint every step, evaluation every "
        f"{EVAL_EVERY}): " + ", ".join(m["kind"] for m in plan)
    )

    # The uninterrupted run: the reference, and it fills the compilation cache.
    ref = Trainer(root, root / "uninterrupted", steps)
    proc = ref.start()
    t0, startup_s = time.monotonic(), None
    while proc.poll() is None:
        if startup_s is None and ref.logged_steps():
            startup_s = time.monotonic() - t0
        time.sleep(0.05)
    if proc.returncode != 0:
        say(f"error: the uninterrupted run failed (status {proc.returncode}); see {proc.log}")
        return 1
    run_s = time.monotonic() - t0
    startup_s = startup_s or run_s
    say(f"uninterrupted run: {run_s:.1f}s (first step logged after {startup_s:.1f}s)")
    # Restarts load compilations from the cache: time start-up (to the first step) warm.
    warm = Trainer(root, root / "warm", 1)
    t0, proc = time.monotonic(), warm.start()
    while proc.poll() is None and not warm.logged_steps():
        time.sleep(0.02)
    startup_s = time.monotonic() - t0
    proc.wait()
    shutil.rmtree(warm.workdir, ignore_errors=True)
    say(f"restart start-up (compilations cached): {startup_s:.1f}s")

    faulted = Trainer(root, root / "faulted", steps)
    survived = 0
    proc = faulted.start()
    for i, moment in enumerate(plan, 1):
        where = kill_at(faulted, proc, moment, startup_s)
        if not where:
            problems = warnings_and_errors(proc.log) if proc.returncode else []
            say(
                f"kill {i}/{args.kills}: not delivered, the run ended first (status "
                f"{proc.returncode}{': ' + problems[-1] if problems else ''})"
            )
            if proc.returncode:
                survived -= 1  # the restart after the previous kill failed
                break
            proc = faulted.start()
            continue
        kept = faulted.kept_step()
        logged = max(faulted.logged_steps(), default=0)
        say(
            f"kill {i}/{args.kills}: SIGKILL {where}, {time.monotonic() - t_start:.0f}s in; "
            f"kept: checkpoint step {kept if kept is not None else 'none'}, "
            f"metrics through step {logged}"
        )
        proc = faulted.start()
        # The kill is survived unless the restart after it stops on an error (a restart
        # killed by the next kill or finishing well both went on from the kept state).
        survived += 1

    # Damage the newest checkpoint once: let the last restart save a step, with an older
    # finished step to fall back on, then stop it hard.
    rng = np.random.default_rng(args.seed + 1)
    base = max(faulted.logged_steps(), default=0)
    while proc.poll() is None and (
        max(faulted.logged_steps(), default=0) <= base + 1 or len(faulted.finished_steps()) < 2
    ):
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode not in (0, -signal.SIGKILL):
        survived -= 1  # the restart after the last kill failed
    what = corrupt(faulted.workdir, rng)
    say(f"damaged checkpoint: {what}")

    # The final run, and the same command again while it holds the workdir.
    final = faulted.start()
    while final.poll() is None and not _holds_lock(faulted.workdir, final.pid):
        time.sleep(0.02)
    second = faulted.start()
    second.wait()
    lines = warnings_and_errors(second.log)
    turned_away = second.returncode == 2 and any("in use by another run" in ln for ln in lines)
    say(
        f"second run on the same workdir: status {second.returncode}, "
        + (lines[-1] if lines else "no message")
    )
    final.wait()
    notes = warnings_and_errors(final.log)
    for ln in notes:
        say(f"final run: {ln}")
    damage_survived = final.returncode == 0 and any("damaged" in ln for ln in notes)

    identical = False
    if final.returncode == 0:
        identical, what = compare(ref.workdir, faulted.workdir)
        say(
            f"final checkpoint vs uninterrupted: {'identical' if identical else 'DIFFERENT'} "
            f"({what})"
        )
        ours, theirs = metrics_lines(faulted.workdir), metrics_lines(ref.workdir)
        same_steps = ours == theirs
        say(f"metrics.jsonl steps as uninterrupted (each once): {'yes' if same_steps else 'no'}")
        identical = identical and same_steps
    else:
        say(f"final run failed (status {final.returncode}); see {final.log}")
    say(f"wall time: {time.monotonic() - t_start:.0f}s, {faulted.runs} runs of train.py")
    say(
        f"damaged checkpoint: {'skipped and reported' if damage_survived else 'NOT survived'}; "
        f"second run: {'turned away' if turned_away else 'NOT turned away'}"
    )
    say(
        f"faults survived: {survived}/{args.kills}, "
        f"weights identical: {'yes' if identical else 'no'}"
    )
    return 0 if identical and damage_survived and turned_away and survived == args.kills else 1


def _holds_lock(workdir: Path, pid: int) -> bool:
    try:
        return (workdir / ".lock").read_text().startswith(f"pid {pid} ")
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
