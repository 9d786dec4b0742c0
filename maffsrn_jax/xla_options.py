"""XLA compiler options under which MAFFSRN compiles fastest, per backend.

On CPU this jaxlib hands convolutions, dots and large reductions to YNNPACK, which runs a
convolution on one thread. Switching the YNNPACK fusions off puts them on XLA's
multi-threaded Eigen kernels instead. (Without YNNPACK, XLA rewrites a plain sum over many
pixels into a slow tree of reduce-windows; `layers._sum_pixels` is why that does not bite.)
Measured with `python -m maffsrn_jax.speed` (with and without `--xla-defaults`; the version
that still ran both frameworks in one process) on a 2-core CPU, relative to PyTorch in the
same run: the x2 train step went from 1.25x to 0.96x, x4 inference from 0.81x to 0.62x.
(When other jobs hold the cores, the single-threaded kernels can win by a few percent.)

Every jit and pmap of the package compiles with `compiler_options()`; other backends get
none.

`keep_freed_memory()` (called first by every command-line entry point) is the other half:
XLA:CPU mallocs a program's temporaries afresh on each run, ~1 GB for the x2 train step,
and glibc hands that memory back to the kernel on free, so every step page-faulted it all
in again (~250k faults, ~1 s of system time per step on the 2-core CPU).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from typing import Any

import jax
import jax.numpy as jnp

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def _cpu_supported() -> bool:
    # A jaxlib that no longer knows the option would fail every compile; check once.
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception as e:  # any rejection means "compile without them"
        logging.warning("XLA rejected %s (%s); compiling with its defaults", CPU_OPTIONS, e)
        return False
    return True


def compiler_options() -> dict[str, Any] | None:
    """The options for JAX's default backend, or None where XLA's own are best."""
    if jax.default_backend() != "cpu" or not _cpu_supported():
        return None
    return dict(CPU_OPTIONS)


def resolve(options: dict[str, Any] | None) -> dict[str, Any]:
    """`options` as given; None stands for `compiler_options()` ({} means XLA's defaults)."""
    return dict(compiler_options() or {}) if options is None else dict(options)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_KEEP_FREED = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory mapped for reuse; True where it took effect.

    One arena, no per-allocation mmaps and no trimming (mallopt, the same as
    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647): the process
    keeps its high-water mark of heap instead of returning it after each step, and the
    ~250k page faults per x2 train step go to zero (`python -m maffsrn_jax.profile --train`
    with and without `--malloc-defaults`, and `python -m maffsrn_jax.speed`, report them).
    Per-thread arenas are what it must avoid: glibc unmaps a thread heap as
    soon as it empties, whatever the trim threshold. Call it before JAX starts its CPU
    client: a thread that has already picked a malloc arena keeps it. A no-op (False) off
    glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # musl and other libcs accept the call but ignore it (returning 0). A list, not a
    # generator: every option is set even if an earlier one is refused.
    return all([mallopt(param, value) == 1 for param, value in _KEEP_FREED])
