"""XLA compiler options under which MAFFSRN compiles fastest, per backend.

On CPU this jaxlib hands convolutions, dots and large reductions to YNNPACK, which runs a
convolution on one thread. Switching the YNNPACK fusions off puts them on XLA's
multi-threaded Eigen kernels instead. (Without YNNPACK, XLA rewrites a plain sum over many
pixels into a slow tree of reduce-windows; `models._sum_pixels` is why that does not bite.)
Measured with `python -m maffsrn_jax.speed` (with and without
`--xla-defaults`) on a 2-core CPU, relative to PyTorch in the same run: the x2 train step
went from 1.25x to 0.96x, x4 inference from 0.81x to 0.62x. (When other jobs hold the
cores, the single-threaded kernels can win by a few percent.)

Every jit and pmap of the package compiles with `compiler_options()`; other backends get
none.
"""

from __future__ import annotations

import functools
import logging
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
