"""Train MAFFSRN: `python train.py --config configs/<name>.py --workdir DIR [--config.<field>=v]`.

Running the same command again resumes from the newest intact checkpoint in DIR and ends
bit-identical to an uninterrupted run, after SIGTERM / Ctrl-C (which save a checkpoint and
exit), SIGKILL, a crash, a damaged checkpoint (skipped, moved to DIR/damaged/) or a full
disk; each fault is reported in one line. A second run on a DIR in use exits at once.
Multi-host: pass --coordinator_address, --num_processes and --process_id to every process
(or run under SLURM, which JAX detects).
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from maffsrn_jax.errors import Error
from maffsrn_jax.train_loop import (
    Interrupted,
    NonFiniteError,
    TrainingError,
    train_and_evaluate,
)

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries and metrics.jsonl.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host runs).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed() -> None:
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from maffsrn_jax import xla_options

    xla_options.keep_freed_memory()  # before JAX starts its CPU threads
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
        sys.exit(1)
    except Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with config mistakes reported in one line instead of a traceback."""
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpshort to see the flags.")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a missing field
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        bad = next((o for o in overrides if o.rsplit(".", 1)[-1] in str(e)), "--config.<field>")
        hint = re.search(r'Did you mean "(\w+)"', str(e))
        sys.exit(
            f"error: {bad}: the config has no such field"
            + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
        )
    except (TypeError, ValueError) as e:  # ml_collections: a value of the wrong type
        sys.exit(f"error: bad --config override: {e}")
    try:
        FLAGS.config.to_dict()  # a config file that failed to load only says so when used
    except OSError as e:
        detail = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        sys.exit(f"error: --config={FLAGS['config'].config_filename}: {detail[-1]}")
    except Exception as e:  # the config file itself raised
        sys.exit(f"error: --config={FLAGS['config'].config_filename}: {type(e).__name__}: {e}")
    return rest


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
