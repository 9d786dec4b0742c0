"""MAFFSRN's 3x3 convolutions and 1x1 kernel gradients on XLA:CPU as AVX-512 kernels.

XLA:CPU convolves through Eigen with 256-bit vectors. MAFFSRN spends most of a CPU train step
in its 3x3 convolutions of 32 channels, whose input and kernel gradients Eigen runs at about a
third of its forward speed, and in 1x1 kernel gradients, long sums over pixels into a few
channels. The register-blocked AVX-512 loops of `cpu_conv.cc` do these in much less time
(measurements in docs/performance.md; `python -m maffsrn_jax.speed --xla-conv-side` times the
model with and without them).

The C++ source ships with the package and is compiled on first use with the system C++
compiler (`$CXX`, else `c++`) against jaxlib's XLA FFI headers. The library is cached under
`$XDG_CACHE_HOME/maffsrn_jax` (default `~/.cache/maffsrn_jax`), keyed by the source and the
jaxlib version. Where the CPU lacks AVX-512, the platform is not x86-64, no compiler is found
or the build fails, `available()` is False and the layers keep XLA's own convolution (a
failed build logs one warning). `MAFFSRN_JAX_CPU_CONV=0` turns the kernels off.

Results match XLA's convolution to float32 rounding, and do not depend on the number of
threads (see the source's header).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp

SOURCE = Path(__file__).with_name("cpu_conv.cc")
OPT_OUT_ENV = "MAFFSRN_JAX_CPU_CONV"  # "0": XLA's own convolution everywhere
# Every custom-call target registered here starts with this (to find them in a program).
KERNEL_PREFIX = "maffsrn_cpu_"
_FORWARD = KERNEL_PREFIX + "conv3x3_forward"
_KERNEL_GRAD = KERNEL_PREFIX + "conv3x3_kernel_grad"
_OUTER_SUM = KERNEL_PREFIX + "pixel_outer_sum"
_LANES = 16  # float32 lanes of an AVX-512 register; channel counts come in these
_GRAD_CHUNKS = 16  # partial sums of a kernel gradient (`kGradChunks` in the source)
_XLA_ONLY = contextvars.ContextVar("maffsrn_jax_cpu_conv_xla_only", default=False)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "maffsrn_jax"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _build(compiler: str) -> Path:
    """Compile `cpu_conv.cc` into the cache (once per source and jaxlib) and return the path."""
    from importlib import metadata

    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(metadata.version("jaxlib").encode())
    key.update(compiler.encode())
    target = _cache_dir() / f"cpu_conv-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place, so that concurrent first uses (test
    # workers, processes of one run) never load a half-written library.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        subprocess.run(
            [compiler, "-O3", "-std=c++17", "-shared", "-fPIC",
             "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp],
            check=True, capture_output=True, text=True, timeout=600,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


@functools.cache
def available() -> bool:
    """Whether the AVX-512 kernels are built, loaded and registered with XLA:CPU."""
    if os.environ.get(OPT_OUT_ENV) == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    compiler = _compiler()
    if compiler is None:
        return False
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        lines = (getattr(e, "stderr", None) or "").strip().splitlines()
        reason = lines[-1] if lines else str(e)
        logging.warning(
            "maffsrn_jax: could not build %s with %s, so XLA's convolution runs instead: %s",
            SOURCE.name, compiler, reason,
        )
        return False
    if not lib.MaffsrnConv3x3Supported():
        return False
    jax.ffi.register_ffi_target(
        _FORWARD, jax.ffi.pycapsule(lib.MaffsrnConv3x3Forward), platform="cpu"
    )
    jax.ffi.register_ffi_target(
        _KERNEL_GRAD, jax.ffi.pycapsule(lib.MaffsrnConv3x3KernelGrad), platform="cpu"
    )
    jax.ffi.register_ffi_target(
        _OUTER_SUM, jax.ffi.pycapsule(lib.MaffsrnPixelOuterSum), platform="cpu"
    )
    return True


def _whole_registers(channels: int) -> bool:
    return channels % _LANES == 0 and _LANES <= channels <= 4 * _LANES


def _runs_here(dtype: jnp.dtype) -> bool:
    return (
        jnp.dtype(dtype) == jnp.float32
        and not _XLA_ONLY.get()
        and jax.default_backend() == "cpu"
        and available()
    )


@contextlib.contextmanager
def xla_convolutions() -> Iterator[None]:
    """Within this context, models traced use XLA's own convolutions and products.

    For XLA's cost analysis, which cannot see into the kernels' custom calls. Only tracing
    inside the context is affected: trace a new function (a fresh `jax.jit`), since JAX
    reuses the trace of a function it has seen.
    """
    token = _XLA_ONLY.set(True)
    try:
        yield
    finally:
        _XLA_ONLY.reset(token)


def supports(in_features: int, features: int, dtype: jnp.dtype) -> bool:
    """Whether a 3x3 'same' convolution with these channels runs on the kernels.

    Both channel counts must be whole registers (16 to 64): the output's for the forward
    pass and kernel gradient, the input's for the input gradient (a forward pass back).
    """
    return _whole_registers(in_features) and _whole_registers(features) and _runs_here(dtype)


def supports_pointwise(in_features: int, features: int, dtype: jnp.dtype) -> bool:
    """Whether `pointwise` takes its kernel gradient from the kernels: one channel count in
    whole registers (the sum is computed transposed when only the input's is)."""
    return (_whole_registers(features) or _whole_registers(in_features)) and _runs_here(dtype)


def _require() -> None:
    if not available():
        raise RuntimeError("maffsrn_jax.cpu_conv: the AVX-512 kernels are not available here")


def _forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    _require()
    out = jax.ShapeDtypeStruct((*x.shape[:-1], kernel.shape[-1]), jnp.float32)
    return jax.ffi.ffi_call(_FORWARD, out, vmap_method="sequential")(x, kernel)


def _summed(target: str, shape: tuple[int, ...], units: int, *args: jax.Array) -> jax.Array:
    """A kernel gradient from `target`, summed over `units` rows or pixels in fixed chunks.

    The chunks' partial sums go to a second result, a workspace that XLA allocates with the
    program's other temporaries.
    """
    _require()
    chunks = max(1, min(units, _GRAD_CHUNKS))
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    workspace = jax.ShapeDtypeStruct((chunks * math.prod(shape),), jnp.float32)
    return jax.ffi.ffi_call(target, (out, workspace), vmap_method="sequential")(*args)[0]


@jax.custom_vjp
def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' 3x3 convolution, stride 1: [N, H, W, C] x [3, 3, C, O] -> [N, H, W, O], float32.

    The same function as `jax.lax.conv_general_dilated` with padding 1 (NHWC, HWIO). Only
    for shapes that `supports` accepts.
    """
    return _forward(x, kernel)


def _conv3x3_fwd(x, kernel):
    return _forward(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, g):
    x, kernel = residuals
    # d/dx is the 'same' convolution of g with the kernel rotated by 180 degrees and its
    # input and output channels swapped.
    dx = _forward(g, jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))
    dk = _summed(_KERNEL_GRAD, kernel.shape, x.shape[0] * x.shape[1], x, g)
    return dx, dk


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _outer_sum(a: jax.Array, g: jax.Array) -> jax.Array:
    """a.T @ g over pixels, [P, C] x [P, O] -> [C, O]; O (or else C) in whole registers."""
    if not _whole_registers(g.shape[-1]):
        return _outer_sum(g, a).T
    return _summed(_OUTER_SUM, (a.shape[-1], g.shape[-1]), math.prod(a.shape[:-1]), a, g)


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel, [P, C] x [C, O] -> [P, O] float32: a 1x1 convolution over flattened pixels.

    The product and the input gradient stay XLA's; the kernel gradient, a sum over all P
    pixels that Eigen runs slowly for so few channels, is `MaffsrnPixelOuterSum`. Only for
    shapes that `supports_pointwise` accepts.
    """
    return x @ kernel


def _pointwise_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _pointwise_bwd(residuals, g):
    x, kernel = residuals
    return g @ kernel.T, _outer_sum(x, g)


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)
