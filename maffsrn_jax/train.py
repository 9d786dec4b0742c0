"""Trains MAFFSRN.

    maffsrn-train --config quickstart --workdir runs/quickstart
    maffsrn-train --config maffsrn_x2 --workdir runs/x2 --config.data.dir=/data/DIV2K
    maffsrn-train --config my_config.py --workdir runs/mine --config.batch_size=32

--config is a config file, or the name of one shipped with the package: quickstart (a few
minutes on a CPU), maffsrn_x2/x3/x4 and maffsrn_l_x2/x3/x4 (the paper's recipe on DIV2K),
pretrained_x2/x3/x4, pretrained_x2/x3/x4_stage2, pretrained_x2/x3/x4_stage3,
pretrained_x2/x3/x4_stage4 and pretrained_x2/x3_stage5 (the shipped weights' stages). Any field
can be overridden with --config.<field>=VALUE.

Running the same command again resumes from the newest intact checkpoint in the workdir and
ends bit-identical to an uninterrupted run, after SIGTERM / Ctrl-C (which save a checkpoint
and exit), SIGKILL, a crash, a damaged checkpoint (skipped, moved to WORKDIR/damaged/) or a
full disk; each fault is reported in one line. A second run on a workdir in use exits at once.
Multi-host: pass --coordinator_address, --num_processes and --process_id to every process
(or run under SLURM, which JAX detects).

Exit codes: 0 done (or stopped by SIGTERM / Ctrl-C after a checkpoint), 1 the run diverged,
2 bad input (one `error:` line).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from maffsrn_jax.cli import prog_name
from maffsrn_jax.errors import Error

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, or a shipped config's name.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and metrics.jsonl.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])

SHIPPED_CONFIGS = Path(__file__).with_name("configs")
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull")


def shipped_config_names() -> list[str]:
    """The configs that ship with the package, by name ('quickstart', 'maffsrn_x2', ...)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.py")
                  if p.stem not in ("__init__", "default"))


def resolve_config_arg(argv: list[str]) -> list[str]:
    """`argv` with a --config that names no existing file but a shipped config (`quickstart`,
    `maffsrn_x2.py`, `configs/maffsrn_x2.py` outside a checkout) pointing at the shipped file."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            at, value = i + 1, out[i + 1]
        elif arg.startswith("--config="):
            at, value = i, arg[len("--config="):]
        else:
            continue
        path, sep, rest = value.partition(":")  # ml_collections: FILE:ARGUMENT
        shipped = SHIPPED_CONFIGS / f"{Path(path).stem}.py"
        if path and not os.path.exists(path) and Path(path).stem in shipped_config_names():
            resolved = f"{shipped}{sep}{rest}"
            out[at] = resolved if at == i + 1 else f"--config={resolved}"
    return out


def usage() -> str:
    prog = prog_name("maffsrn_jax.train")
    flag_help = "".join(f"  --{f.name}: {f.help}\n"
                        for f in FLAGS.get_flags_for_module(sys.modules[__name__]))
    return (f"usage: {prog} --config CONFIG --workdir DIR [--config.FIELD=VALUE ...]\n\n"
            f"{__doc__}\nflags:\n{flag_help}")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def init_distributed() -> None:
    import jax

    from maffsrn_jax.train_loop import TrainingError

    if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.process_id is not None:
        missing = [
            f"--{n}"
            for n in ("coordinator_address", "num_processes", "process_id")
            if getattr(FLAGS, n) is None
        ]
        if missing:
            raise TrainingError(f"multi-host runs need {', '.join(missing)} as well")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()  # JAX reads the SLURM environment itself


def run(argv: list[str]) -> None:
    """absl's main: the flags are parsed; trains and exits with the command's status."""
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    from maffsrn_jax import xla_options

    xla_options.tune_process()  # on CPU runs; before JAX starts its CPU threads
    from maffsrn_jax.train_loop import Interrupted, NonFiniteError, train_and_evaluate

    # Orbax and absl are chatty at INFO; progress goes to the bar and metrics.jsonl.
    std_logging.getLogger("absl").setLevel(std_logging.WARNING)
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)  # "no TPU" notes
    try:
        init_distributed()
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(0)
    except NonFiniteError as e:  # the run diverged: not a usage error
        print(f"error: {e}", file=sys.stderr)
        _exit_failed(1)
    except Error as e:
        print(f"error: {e}", file=sys.stderr)
        _exit_failed(2)


def _exit_failed(code: int) -> None:
    """Exits a failed run; a multi-host one at once: at a normal exit JAX waits at a shutdown
    barrier for every process (300 s, then aborts with a stack trace), and the process that
    failed or hangs may never come."""
    import jax

    if jax.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config mistakes reported in one line instead of a traceback."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        sys.stdout.write(usage())
        sys.exit(0)
    argv = resolve_config_arg(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        _fail(f"{e} (--help lists the flags)")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a missing field
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        bad = next((o for o in overrides if o.rsplit(".", 1)[-1] in str(e)), "--config.<field>")
        hint = re.search(r'Did you mean "(\w+)"', str(e))
        _fail(f"{bad}: the config has no such field"
              + (f' (did you mean "{hint.group(1)}"?)' if hint else ""))
    except (TypeError, ValueError) as e:  # ml_collections: a value of the wrong type
        _fail(f"bad --config override: {e}")
    try:
        FLAGS.config.to_dict()  # a config file that failed to load only says so when used
    except OSError as e:
        detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        shipped = ", ".join(shipped_config_names())
        _fail(f"--config={FLAGS['config'].config_filename}: {detail[-1]} "
              f"(shipped configs: {shipped})")
    except Exception as e:  # the config file itself raised
        _fail(f"--config={FLAGS['config'].config_filename}: {type(e).__name__}: {e}")
    return rest


def main() -> None:
    """The `maffsrn-train` command (and `python -m maffsrn_jax.train`, `python train.py`)."""
    app.run(run, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
