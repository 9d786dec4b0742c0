"""XLA compiler options under which MAFFSRN compiles fastest, and the process tuning of the
command-line entry points.

On CPU this jaxlib hands convolutions, dots and large reductions to YNNPACK, which runs a
convolution on one thread. Switching the YNNPACK fusions off (`CPU_OPTIONS`, the debug option
`xla_cpu_experimental_ynn_fusion_type`, passed per compile) puts them on XLA's multi-threaded
Eigen kernels instead. (Without YNNPACK, XLA rewrites a plain sum over many pixels into a
slow tree of reduce-windows; `layers._sum_pixels` is why that does not bite.)
`python -m benchmarks.speed` with and without `--xla-defaults` shows the difference
(docs/performance.md). When other jobs hold the cores, the single-threaded kernels lose
little.

Every jit and pmap of the package compiles with `compiler_options()`, and
`maffsrn_jax.jit_apply(model)` gives users the same program; other backends get none. The
package never sets XLA_FLAGS: that would change how every other program in the user's
process compiles.

`tune_process()` (called first by the command-line entry points, never on import) is the
other half, on CPU runs only: XLA:CPU mallocs a program's temporaries afresh on each run
(about 1 GB for the x2 train step), and glibc hands that memory back to the kernel on free, so
without `keep_freed_memory()` every step page-faults all of it in again (`--malloc-defaults`
in `profile` and `speed` shows it). On GPU the temporaries live in device memory, so the
setting would only change the host allocator for nothing measured.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import sys
from importlib import metadata
from typing import Any

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}

# Not the root logger: logging.warning() would install a handler on it when it has none.
_log = logging.getLogger(__name__)


@functools.cache
def _cpu_supported() -> bool:
    import jax
    import jax.numpy as jnp

    # A jaxlib that no longer knows the option would fail every compile; check once.
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception as e:  # any rejection means "compile without them"
        _log.warning("XLA rejected %s (%s); compiling with its defaults", CPU_OPTIONS, e)
        return False
    return True


def compiler_options() -> dict[str, Any] | None:
    """The options for JAX's default backend, or None where XLA's own are best."""
    import jax

    if jax.default_backend() != "cpu" or not _cpu_supported():
        return None
    return dict(CPU_OPTIONS)


def resolve(options: dict[str, Any] | None) -> dict[str, Any]:
    """`options` as given; None stands for `compiler_options()` ({} means XLA's defaults)."""
    return dict(compiler_options() or {}) if options is None else dict(options)


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# A trim threshold of -1 is read by glibc as the largest size_t: never trim. The largest
# positive int (2 GiB) is not enough: the top of the x2 train step's heap can free more than
# that at the end of a step, and each trim costs the next step ~200k page faults.
_KEEP_FREED = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory mapped for reuse; True where it took effect.

    One arena, no per-allocation mmaps and no trimming (mallopt, like MALLOC_ARENA_MAX=1
    MALLOC_MMAP_MAX_=0 and a trim threshold larger than any heap): the process
    keeps its high-water mark of heap instead of returning it after each step, and the
    ~250k page faults per x2 train step go to zero (`python -m maffsrn_jax.profile --train`
    with and without `--malloc-defaults`, and `python -m benchmarks.speed`, report them).
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


def run_platform() -> str | None:
    """The platform JAX will run on ('cpu', 'cuda', 'tpu', ...), without starting a backend.

    JAX takes the first of `JAX_PLATFORMS` (or `jax.config.jax_platforms`) when set, and
    otherwise prefers any accelerator whose plugin is installed. None: a plugin is installed
    but whether its device is present is only known once JAX starts it.
    """
    import jax

    chosen = jax.config.jax_platforms
    if chosen:
        return chosen.split(",")[0].strip().lower()
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.default_backend()
    plugins = metadata.entry_points(group="jax_plugins")
    if plugins or importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu"):
        return None
    return "cpu"


def tune_process(platform: str | None = None) -> bool:
    """The process-wide tuning of a command-line run: `keep_freed_memory()` on CPU runs.

    For entry points only (a library must not change its host's allocator), called first,
    before JAX starts its CPU threads. `platform` is the one the command was asked to run on,
    when it knows ('cpu', 'gpu', ...); by default `run_platform()`. Returns whether freed
    memory is now kept (False on accelerator runs, on an undecided platform and off glibc).
    """
    platform = run_platform() if platform is None else platform.lower()
    return platform == "cpu" and keep_freed_memory()
