"""maffsrn_jax.xla_options: which XLA options the package compiles with, and that they change
speed only: the model, its gradients and the pmapped train step agree with XLA's defaults;
that keep_freed_memory keeps freed memory mapped, and tune_process does it on CPU runs only."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from maffsrn_jax import train_lib, xla_options
from maffsrn_jax.models import MAFFSRN
from maffsrn_jax.optim import adamp

TINY = MAFFSRN(2, n_ffgs=1, n_mabs=2)
# The ahead-of-time pmap test is about compiling and caching, not the architecture, and it
# compiles four train steps: one MAB (hierarchical fusion) compiles in ~3/4 of the time.
ONE_MAB = MAFFSRN(2, n_ffgs=1, n_mabs=1, fusion="hff")
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the package's options are CPU's")
def test_cpu_compiles_with_the_package_options():
    assert xla_options.compiler_options() == xla_options.CPU_OPTIONS
    assert xla_options.resolve(None) == xla_options.CPU_OPTIONS
    assert xla_options.resolve({}) == {}  # XLA's own defaults, on request
    assert xla_options.resolve({"a": 1}) == {"a": 1}


@pytest.mark.slow  # compiles the model twice with gradients
def test_forward_and_gradients_agree_with_xla_defaults():
    x = jax.random.uniform(jax.random.key(1), (2, 14, 17, 3))
    params = TINY.init(jax.random.key(0), x)["params"]

    def loss(p):
        return jnp.mean(jnp.abs(TINY.apply({"params": p}, x) - 0.5))

    # YNNPACK's convolution and dot fusions asked for explicitly, so that an XLA_FLAGS of the
    # user's that switches them off does not make both programs the same.
    ynn = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
    on_cpu = jax.default_backend() == "cpu"
    xla_kernels = {"xla_cpu_experimental_ynn_fusion_type": ynn} if on_cpu else {}
    results = []
    for options in (xla_options.compiler_options(), xla_kernels):
        forward = jax.jit(lambda p: TINY.apply({"params": p}, x), compiler_options=options)
        grad = jax.jit(jax.grad(loss), compiler_options=options)
        results.append((forward(params), grad(params)))
    (y1, g1), (y0, g0) = results
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_p_train_step_compiles_once_per_batch_shape_and_matches_plain_pmap():
    schedule = optax.constant_schedule(1e-3)
    tx = adamp(schedule)
    params = ONE_MAB.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    rng = np.random.default_rng(0)

    def batch(p):
        return {
            "lr": rng.integers(0, 256, (1, 2, p, p, 3), dtype=np.uint8),
            "hr": rng.integers(0, 256, (1, 2, 2 * p, 2 * p, 3), dtype=np.uint8),
        }

    step = train_lib.make_p_train_step(ONE_MAB, tx, schedule)
    plain = jax.pmap(train_lib.make_train_step(ONE_MAB, tx, schedule), axis_name=train_lib.AXIS)
    state = train_lib.replicate(train_lib.create_train_state(params, tx))
    reference = train_lib.replicate(train_lib.create_train_state(params, tx))
    for b in (batch(16), batch(20), batch(16)):  # a new shape compiles, an old one is reused
        state, metrics = step(state, b)
        reference, ref_metrics = plain(reference, b)
        np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    assert int(train_lib.unreplicate_to_host(state).step) == 3
    for a, b in zip(
        jax.tree_util.tree_leaves(train_lib.unreplicate_to_host(state).params),
        jax.tree_util.tree_leaves(train_lib.unreplicate_to_host(reference).params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


_REUSE_SCRIPT = """
import ctypes, resource, sys
from maffsrn_jax import xla_options
kept = xla_options.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = int(sys.argv[2])
def touch_once():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)  # every page faults in unless it stayed mapped
    libc.free(p)
touch_once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_once()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="keep_freed_memory sets glibc's malloc options (Linux with glibc only)",
)
@pytest.mark.slow  # a subprocess that maps and frees memory
def test_keep_freed_memory_lets_a_freed_block_be_reused_without_page_faults():
    # In a subprocess: the setting is process-wide and has to come before other threads.
    # Larger than 2 GiB: the top of the heap frees more than the largest positive trim
    # threshold when it is released, as at the end of an x2 train step.
    size = 2**31 + 2**28

    def faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _REUSE_SCRIPT, mode, str(size)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
        ).stdout.split()
        return out[0], int(out[1])

    pages = size // 4096
    kept, with_keep = faults("keep")
    _, without = faults("default")
    assert kept == "True"
    assert without > pages // 2  # glibc unmapped the block on free; it faults in again
    assert with_keep < pages // 50


# --- process tuning: entry points only, CPU runs only -------------------------------------------


def test_tune_process_keeps_freed_memory_on_cpu_runs_only(monkeypatch):
    calls = []
    monkeypatch.setattr(xla_options, "keep_freed_memory", lambda: calls.append(1) or True)
    assert xla_options.tune_process("gpu") is False and calls == []
    assert xla_options.tune_process("CPU") is True and calls == [1]
    monkeypatch.setattr(xla_options, "run_platform", lambda: None)  # a plugin, undecided
    assert xla_options.tune_process() is False and calls == [1]
    monkeypatch.setattr(xla_options, "run_platform", lambda: "cpu")
    assert xla_options.tune_process() is True and calls == [1, 1]


def test_run_platform_follows_jax_platforms():
    before = jax.config.jax_platforms
    try:
        jax.config.update("jax_platforms", "cuda,cpu")
        assert xla_options.run_platform() == "cuda"
        jax.config.update("jax_platforms", "cpu")
        assert xla_options.run_platform() == "cpu"
    finally:
        jax.config.update("jax_platforms", before)
