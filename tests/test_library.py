"""maffsrn_jax as a library: importing it, building and running the model and reading and
writing checkpoints change nothing outside the package (environment, hooks, logging), and
`jit_apply` is `jax.jit(model.apply)` compiled with the package's options."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import maffsrn_jax
from maffsrn_jax import checkpoints, xla_options
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO

# Subprocesses, whole training runs or exports: out of the edit-run loop (CI runs them).
pytestmark = pytest.mark.slow

# Dependencies are imported first: what JAX itself sets on import (TF_CPP_MIN_LOG_LEVEL, ...)
# is not the package's doing. Everything after the snapshot is.
_SCRIPT = """
import json, logging, os, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np, flax.linen, orbax.checkpoint

def snapshot():
    loggers = {name: [logger.level, [repr(f) for f in logger.filters],
                      [repr(h) for h in logger.handlers], logger.propagate, logger.disabled]
               for name, logger in logging.root.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    root = [logging.root.level, [repr(f) for f in logging.root.filters],
            [repr(h) for h in logging.root.handlers]]
    return {"env": dict(os.environ), "unraisablehook": repr(sys.unraisablehook),
            "excepthook": repr(sys.excepthook), "root": root, "loggers": loggers}

before = snapshot()
import maffsrn_jax
from maffsrn_jax import MAFFSRN, checkpoints
model = MAFFSRN(scale=2, n_ffgs=1)
x = jnp.ones((1, 16, 16, 3))
variables = model.init(jax.random.key(0), x)
y = maffsrn_jax.jit_apply(model)(variables, x)
z = jax.jit(model.apply)(variables, x)
assert y.shape == z.shape == (1, 32, 32, 3)
root = Path(sys.argv[1])
mngr = checkpoints.manager(root)
checkpoints.save(mngr, 1, {"params": {"w": np.ones(3)}}, {"arch": 1})
mngr.close()
checkpoints.restore(root)
(root / "1" / checkpoints.COMMIT_MARKER).unlink()
try:
    checkpoints.restore(root, 1)  # a damaged step: the failure path has its own hooks
except checkpoints.CheckpointError:
    pass
after = snapshot()
changed = {k: (before[k], after[k]) for k in ("unraisablehook", "excepthook", "root")
           if before[k] != after[k]}
changed["env"] = {k: [before["env"].get(k), after["env"].get(k)]
                  for k in set(before["env"]) | set(after["env"])
                  if before["env"].get(k) != after["env"].get(k)}
changed["loggers"] = {n: [before["loggers"].get(n), v] for n, v in after["loggers"].items()
                      if before["loggers"].get(n, [0, [], [], True, False]) != v}
print(json.dumps(changed))
"""


def test_import_build_run_and_checkpoints_change_nothing_outside_the_package(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "ckpt")],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed.pop("env") == {}  # XLA_FLAGS in particular
    assert changed.pop("loggers") == {}  # levels, filters and handlers; new ones left plain
    assert changed == {}  # sys.unraisablehook, sys.excepthook, the root logger


def test_jit_apply_is_a_plain_jit_of_apply_compiled_with_the_package_options():
    model = MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    x = jax.random.uniform(jax.random.key(1), (2, 17, 14, 3))
    variables = model.init(jax.random.key(0), x)
    fast, plain = maffsrn_jax.jit_apply(model), jax.jit(model.apply)
    np.testing.assert_allclose(fast(variables, x), plain(variables, x), rtol=1e-5, atol=1e-5)
    text = fast.lower(variables, x).compile().as_text()
    if jax.default_backend() == "cpu" and "ynn_fusion" not in os.environ.get("XLA_FLAGS", ""):
        # The option is per program: this one has no YNNPACK fusion, a plain jit does.
        assert xla_options.compiler_options() == xla_options.CPU_OPTIONS
        assert "__ynn_fusion" not in text
        assert "__ynn_fusion" in plain.lower(variables, x).compile().as_text()


def _fail(message: str) -> None:
    raise ValueError(message)


def test_the_failed_read_silencer_is_scoped_to_its_call(caplog):
    """Inside `_quiet_failed_reads`, the two kinds of noise a failed restore leaves are
    dropped and everything else passes; outside it, the hook and asyncio's logger are the
    user's again."""
    seen = []

    class Unraisable:
        def __init__(self, exc: BaseException):
            self.exc_value = exc

    def mine(unraisable) -> None:
        seen.append(str(unraisable.exc_value))

    asyncio_logger = logging.getLogger("asyncio")
    noise = "DATA_LOSS: read failed [tensorstore_spec='{}']"

    def emit_all() -> None:
        sys.unraisablehook(Unraisable(RuntimeError("Event loop is closed")))
        sys.unraisablehook(Unraisable(RuntimeError("something else")))
        for message in (noise, "another task error"):
            try:
                _fail(message)
            except ValueError:
                asyncio_logger.error("Task exception was never retrieved", exc_info=True)

    previous, filters = sys.unraisablehook, list(asyncio_logger.filters)
    sys.unraisablehook = mine
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            with pytest.raises(ValueError):
                with checkpoints._quiet_failed_reads():
                    emit_all()
                    assert seen == ["something else"]
                    assert [r.exc_info[1].args[0] for r in caplog.records] == [
                        "another task error"]
                    _fail("the restore failed")
            assert sys.unraisablehook is mine and asyncio_logger.filters == filters
            seen.clear()
            caplog.clear()
            emit_all()
        assert seen == ["Event loop is closed", "something else"]
        assert [r.exc_info[1].args[0] for r in caplog.records] == [noise, "another task error"]
    finally:
        sys.unraisablehook = previous
