"""XLA compiler options under which MAFFSRN compiles fastest, per backend.

On CPU this jaxlib hands convolutions, dots and large reductions to YNNPACK, which runs a
convolution on one thread. Switching the YNNPACK fusions off puts them on XLA's
multi-threaded Eigen kernels instead. (Without YNNPACK, XLA rewrites a plain sum over many
pixels into a slow tree of reduce-windows; `layers._sum_pixels` is why that does not bite.)
`python -m maffsrn_jax.speed` with and without `--xla-defaults` shows the difference
(docs/performance.md). When other jobs hold the cores, the single-threaded kernels lose
little.

Every jit and pmap of the package compiles with `compiler_options()`; other backends get
none. So that a user's own `jax.jit(lambda v, x: model.apply(v, x))` is as fast,
`default_xla_flags()` (run when `maffsrn_jax` is imported) also puts the option in XLA_FLAGS
while it can still take effect, that is before JAX starts its CPU backend, which is when
XLA reads XLA_FLAGS. It leaves XLA_FLAGS alone when the user's XLA_FLAGS already sets the
option (their choice wins), when MAFFSRN_JAX_XLA_DEFAULTS=1 asks for XLA's defaults, when
JAX's backends are already running (too late: the package's own jits still pass the option),
and for jaxlib versions not known to have the flag (XLA aborts the process on an unknown
flag in XLA_FLAGS). The option only concerns XLA:CPU; GPU programs are unaffected.

`keep_freed_memory()` (called first by every command-line entry point) is the other half:
XLA:CPU mallocs a program's temporaries afresh on each run (about 1 GB for the x2 train
step), and glibc hands that memory back to the kernel on free, so without it every step
page-faults all of it in again (`--malloc-defaults` in `profile` and `speed` shows it).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from typing import Any

CPU_OPTIONS: dict[str, Any] = {"xla_cpu_experimental_ynn_fusion_type": ""}

# The same option as an XLA_FLAGS entry, and the jaxlib versions [low, high) whose XLA is
# known to define it (0.10 and 0.11: the versions the package is tested with).
XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type="
_FLAG_KNOWN_JAXLIB = ((0, 10), (0, 12))
OPT_OUT_ENV = "MAFFSRN_JAX_XLA_DEFAULTS"  # "1": leave XLA_FLAGS as the user has it
# Set beside XLA_FLAGS when the package added the flag, so that child processes (which
# inherit both) and `remove_default_xla_flags` can tell it from a user's own setting.
_ADDED_ENV = "MAFFSRN_JAX_ADDED_XLA_FLAG"


def _jaxlib_version() -> tuple[int, ...] | None:
    from importlib import metadata

    try:
        text = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            return None
        parts.append(int(digits))
    return tuple(parts)


def _backends_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # a JAX without it: assume the worst
        return True


def default_xla_flags() -> str:
    """Adds the package's CPU option to XLA_FLAGS where that is safe; returns what it did.

    'added' (now in XLA_FLAGS), 'inherited' (a parent process of the package added it),
    'user' (XLA_FLAGS already sets the option: left as it is), 'opted-out'
    (MAFFSRN_JAX_XLA_DEFAULTS=1), 'too-late' (JAX's backends already started) or
    'unknown-jaxlib' (a version not known to define the flag). See the module docstring.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        return "opted-out"
    if XLA_FLAG.rstrip("=") in flags:
        return "inherited" if os.environ.get(_ADDED_ENV) == XLA_FLAG else "user"
    version = _jaxlib_version()
    low, high = _FLAG_KNOWN_JAXLIB
    if version is None or not low <= version < high:
        return "unknown-jaxlib"
    if _backends_started():
        return "too-late"
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_FLAG}".strip()
    os.environ[_ADDED_ENV] = XLA_FLAG
    return "added"


def remove_default_xla_flags() -> bool:
    """Takes the flag that `default_xla_flags` added back out of XLA_FLAGS.

    For runs that ask for XLA's own defaults (`--xla-defaults`). Returns True when XLA_FLAGS
    no longer holds the package's flag and JAX's backends have not started yet, i.e. the
    next backend compiles with XLA's defaults.
    """
    if _backends_started():  # XLA has read XLA_FLAGS; changing them now would only mislead
        return False
    if os.environ.get(_ADDED_ENV) == XLA_FLAG:
        flags = os.environ.get("XLA_FLAGS", "").split()
        os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f != XLA_FLAG)
        del os.environ[_ADDED_ENV]
    return XLA_FLAG.rstrip("=") not in os.environ.get("XLA_FLAGS", "")


@functools.cache
def _cpu_supported() -> bool:
    import jax
    import jax.numpy as jnp

    # A jaxlib that no longer knows the option would fail every compile; check once.
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.float32(0)).compile()
    except Exception as e:  # any rejection means "compile without them"
        logging.warning("XLA rejected %s (%s); compiling with its defaults", CPU_OPTIONS, e)
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
