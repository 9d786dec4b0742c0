"""MAFFSRN's 3x3 convolutions and 1x1 kernel gradients on XLA:CPU as AVX-512 kernels.

XLA:CPU convolves through Eigen with 256-bit vectors. MAFFSRN spends most of a CPU train step
in its 3x3 convolutions of 32 channels, whose input and kernel gradients Eigen runs at about a
third of its forward speed, and in 1x1 kernel gradients, long sums over pixels into a few
channels. The register-blocked AVX-512 loops of `cpu_conv.cc` do these in much less time
(measurements in docs/performance.md).

The layers call three primitives (a 3x3 forward pass, a 3x3 kernel gradient, a sum of pixel
outer products). Each is lowered per platform: on XLA:CPU to the kernels' custom call, and
everywhere else, or where the kernels cannot serve the program, to XLA's own convolution or
product. The kernels step aside (XLA's ops are lowered instead) where the CPU lacks AVX-512,
the platform is not x86-64, no compiler is found or the build fails (one warning), in a program
partitioned over several devices (a custom call would make XLA gather its operands), and for
symbolic shapes. Under `vmap` the forward pass folds the mapped axis into its batch; the
gradients, one sum per mapped element, step aside. Inside a `shard_map` that types arrays as
varying over its manual axes, `conv3x3` and `pointwise` are XLA's ops. `MAFFSRN_JAX_CPU_CONV=0`
keeps the primitives out of traced programs altogether.

The C++ source ships with the package and is compiled on the first lowering for XLA:CPU (never
at import) with the system C++ compiler (`$CXX`, else `c++`) against jaxlib's XLA FFI headers.
The library is cached in `$XDG_CACHE_HOME/maffsrn_jax/cpu_conv` (default `~/.cache/...`),
keyed by the source, the jaxlib version and the compiler, next to a record of its SHA-256. It
is loaded only from a directory that belongs to the user and that nobody else may write to,
and only if the file too is the user's, not writable by group or others, and hashes to the
record. Anything else is rebuilt; where the cache directory itself fails the check, the
library is built in a fresh private temporary directory for the process (with one warning).

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
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

SOURCE = Path(__file__).with_name("cpu_conv.cc")
OPT_OUT_ENV = "MAFFSRN_JAX_CPU_CONV"  # "0": XLA's own convolution everywhere
# Every custom-call target registered here starts with this (to find them in a program).
KERNEL_PREFIX = "maffsrn_cpu_"
_FORWARD = KERNEL_PREFIX + "conv3x3_forward"
_KERNEL_GRAD = KERNEL_PREFIX + "conv3x3_kernel_grad"
_OUTER_SUM = KERNEL_PREFIX + "pixel_outer_sum"
_LANES = 16  # float32 lanes of an AVX-512 register; channel counts come in these
_MAX_CHANNELS = 4 * _LANES  # the forward pass's input channels (`kMaxChannels` in the source)
_GRAD_CHUNKS = 16  # partial sums of a kernel gradient (`kGradChunks` in the source)
_XLA_ONLY = contextvars.ContextVar("maffsrn_jax_cpu_conv_xla_only", default=False)
_NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


# --- Building and loading the library --------------------------------------------------------


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "maffsrn_jax" / "cpu_conv"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def _private(st: os.stat_result) -> bool:
    """Whether a file or directory is the current user's and nobody else may write to it."""
    return st.st_uid == os.getuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_private_dir(path: Path) -> int | None:
    """An open descriptor of `path` (created 0700 if missing), or None if it is not private.

    Everything after this goes through the descriptor, so the checked directory is the one
    used even if its path is changed meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    try:
        fd = os.open(path, _NO_FOLLOW | os.O_DIRECTORY)
    except OSError:  # a symbolic link, or not a directory
        return None
    if _private(os.fstat(fd)):
        return fd
    os.close(fd)
    return None


def _open_private_file(dir_fd: int, name: str) -> int | None:
    """An open descriptor of the regular file `name` if it is private, else None."""
    try:
        fd = os.open(name, _NO_FOLLOW, dir_fd=dir_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and _private(st):
        return fd
    os.close(fd)
    return None


def _sha256(fd: int) -> str:
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while block := os.read(fd, 1 << 20):
        digest.update(block)
    return digest.hexdigest()


def _build_key(compiler: str) -> str:
    from importlib import metadata

    key = hashlib.sha256(SOURCE.read_bytes())
    key.update(metadata.version("jaxlib").encode())
    key.update(compiler.encode())
    return key.hexdigest()[:16]


def _record_name(key: str) -> str:
    return f"cpu_conv-{key}.sha256"


def _library_name(key: str, digest: str) -> str:
    # Named by content too: concurrent builds never leave a record and a library that
    # disagree, and a library the process loaded before under this name is this one (the
    # loader hands back a library already loaded under the same path).
    return f"cpu_conv-{key}-{digest}.so"


def _matches(dir_fd: int, name: str, digest: str) -> bool:
    fd = _open_private_file(dir_fd, name)
    if fd is None:
        return False
    try:
        return _sha256(fd) == digest
    finally:
        os.close(fd)


def _cached(dir_fd: int, key: str) -> str | None:
    """The name of the cached library if it and its record pass every check."""
    record = _open_private_file(dir_fd, _record_name(key))
    if record is None:
        return None
    try:
        digest = os.read(record, 128).decode("ascii", "replace").strip()
    finally:
        os.close(record)
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    name = _library_name(key, digest)
    return name if _matches(dir_fd, name, digest) else None


def _write_atomically(dir_fd: int, name: str, data: bytes) -> None:
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.unlink(tmp, dir_fd=dir_fd)
        raise


def _compile(compiler: str, directory: Path, dir_fd: int, key: str) -> str:
    """Compile `cpu_conv.cc` into the directory, record its hash and return its name."""
    tmp = f".cpu_conv-{key}-{secrets.token_hex(8)}.so.tmp"
    try:
        subprocess.run(
            [compiler, "-O3", "-std=c++17", "-shared", "-fPIC",
             "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(directory / tmp)],
            check=True, capture_output=True, text=True, timeout=600,
        )
        fd = os.open(tmp, _NO_FOLLOW, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise OSError(f"the compiler's output {tmp} is not a file of this user's")
            # The linker gives the library the umask's mode; nobody else may write to it.
            os.fchmod(fd, 0o700)
            os.fsync(fd)
            digest = _sha256(fd)
        finally:
            os.close(fd)
        name = _library_name(key, digest)
        # Library first, record second: a record always names a complete library.
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        _write_atomically(dir_fd, _record_name(key), f"{digest}\n".encode())
        return name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def _load(compiler: str) -> ctypes.CDLL:
    """The kernels' library, checked (and built if need be), loaded."""
    directory = _cache_dir()
    key = _build_key(compiler)
    dir_fd = _open_private_dir(directory)
    temporary = dir_fd is None
    if temporary:
        logging.warning(
            "maffsrn_jax: %s is not a directory of this user's that only they can write to, "
            "so the AVX-512 kernels are built in a temporary directory for this process",
            directory,
        )
        directory = Path(tempfile.mkdtemp(prefix="maffsrn_jax-cpu_conv-"))  # mode 0700
        dir_fd = os.open(directory, _NO_FOLLOW | os.O_DIRECTORY)
    try:
        name = (None if temporary else _cached(dir_fd, key)) or _compile(
            compiler, directory, dir_fd, key
        )
        # Through the checked directory's descriptor where the OS allows it, so that the
        # directory cannot be swapped between the check and the load; only the user can
        # change what is in it.
        proc = f"/proc/self/fd/{dir_fd}"
        return ctypes.CDLL(f"{proc}/{name}" if os.path.isdir(proc) else str(directory / name))
    finally:
        os.close(dir_fd)
        if temporary:
            shutil.rmtree(directory, ignore_errors=True)


def _enabled() -> bool:
    return os.environ.get(OPT_OUT_ENV) != "0" and not _XLA_ONLY.get()


@functools.cache
def available() -> bool:
    """Whether the AVX-512 kernels are built, loaded and registered with XLA:CPU.

    The first call builds the library if it is not cached (seconds); the primitives call it
    when they are first lowered for XLA:CPU.
    """
    if os.environ.get(OPT_OUT_ENV) == "0":
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    compiler = _compiler()
    if compiler is None:
        return False
    try:
        lib = _load(compiler)
        handlers = {
            _FORWARD: lib.MaffsrnConv3x3Forward,
            _KERNEL_GRAD: lib.MaffsrnConv3x3KernelGrad,
            _OUTER_SUM: lib.MaffsrnPixelOuterSum,
        }
        supported = lib.MaffsrnConv3x3Supported()
    # AttributeError: a library without the handlers (a compiler that is not one).
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        stderr = (getattr(e, "stderr", None) or "").strip().splitlines()
        reason = (stderr or str(e).strip().splitlines() or [type(e).__name__])[-1]
        logging.warning(
            "maffsrn_jax: could not build %s with %s, so XLA's convolution runs instead: %s",
            SOURCE.name, compiler, reason,
        )
        return False
    if not supported:
        return False
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    return True


# --- Which calls go to the kernels -----------------------------------------------------------


def _whole_registers(channels: int) -> bool:
    return channels % _LANES == 0 and _LANES <= channels <= _MAX_CHANNELS


def _traces_here(dtype: jnp.dtype) -> bool:
    return jnp.dtype(dtype) == jnp.float32 and _enabled()


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
    """Whether a 3x3 'same' convolution with these channels goes through `conv3x3`.

    Both channel counts must be whole registers (16 to 64): the output's for the forward
    pass and kernel gradient, the input's for the input gradient (a forward pass back).
    Whether the kernels then run is decided per platform when the program is lowered.
    """
    return _whole_registers(in_features) and _whole_registers(features) and _traces_here(dtype)


def supports_pointwise(in_features: int, features: int, dtype: jnp.dtype) -> bool:
    """Whether `pointwise` takes its kernel gradient from the kernels: one channel count in
    whole registers (the sum is computed transposed when only the input's is)."""
    return (_whole_registers(features) or _whole_registers(in_features)) and _traces_here(dtype)


# --- The primitives and their lowerings ------------------------------------------------------


def _xla_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _xla_kernel_grad(x: jax.Array, dy: jax.Array) -> jax.Array:
    kernel = jax.ShapeDtypeStruct((3, 3, x.shape[-1], dy.shape[-1]), dy.dtype)
    return jax.linear_transpose(functools.partial(_xla_forward, x), kernel)(dy)[0]


def _xla_outer_sum(a: jax.Array, g: jax.Array) -> jax.Array:
    return a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])


def _static(shape: Sequence[object]) -> bool:
    return all(isinstance(d, int) for d in shape)


def _forward_fits(x: jax.core.ShapedArray, kernel: jax.core.ShapedArray) -> bool:
    return (x.ndim == kernel.ndim == 4 and kernel.shape[:3] == (3, 3, x.shape[-1])
            and 1 <= x.shape[-1] <= _MAX_CHANNELS and _whole_registers(kernel.shape[-1]))


def _kernel_grad_fits(x: jax.core.ShapedArray, dy: jax.core.ShapedArray) -> bool:
    return (x.ndim == dy.ndim == 4 and x.shape[:-1] == dy.shape[:-1]
            and 1 <= x.shape[-1] <= _MAX_CHANNELS and _whole_registers(dy.shape[-1]))


def _outer_sum_fits(a: jax.core.ShapedArray, g: jax.core.ShapedArray) -> bool:
    return (a.ndim == g.ndim >= 1 and a.shape[:-1] == g.shape[:-1] and a.shape[-1] >= 1
            and _whole_registers(g.shape[-1]))


def _chunks(units: int) -> int:
    return max(1, min(units, _GRAD_CHUNKS))


def _partitioned(ctx: mlir.LoweringRuleContext) -> bool:
    """Whether the program is partitioned over several devices by XLA (GSPMD/Shardy).

    A custom call there is opaque to the partitioner, which gathers its operands whole onto
    every device. Inside a `shard_map` manual over every mesh axis, the code is per device.
    """
    context = ctx.module_context.axis_context
    mesh = getattr(context, "mesh", None)
    if mesh is not None:
        return set(getattr(context, "manual_axes", ())) != set(mesh.axis_names)
    return getattr(context, "num_devices", 1) > 1


def _primitive(
    name: str,
    out_shape: Callable[[tuple[int, ...], tuple[int, ...]], tuple[int, ...]],
    reference: Callable[[jax.Array, jax.Array], jax.Array],
    target: str,
    fits: Callable[[jax.core.ShapedArray, jax.core.ShapedArray], bool],
    workspace: Callable[[tuple[int, ...], tuple[int, ...]], int] | None,
) -> Primitive:
    """A primitive lowered to `target` on XLA:CPU where the kernels can serve the program,
    and to `reference` (XLA's own ops, the same function) everywhere else.

    `workspace` sizes the kernel gradients' second result, the chunks' partial sums, which
    XLA allocates with the program's other temporaries.
    """
    prim = Primitive(name)
    prim.def_impl(jax.jit(prim.bind))

    def abstract_eval(a, b):
        if a.dtype != jnp.float32 or b.dtype != jnp.float32:
            raise TypeError(f"{name} takes float32 arrays, got {a.dtype} and {b.dtype}")
        return jax.core.ShapedArray(out_shape(a.shape, b.shape), jnp.float32)

    prim.def_abstract_eval(abstract_eval)
    fallback = mlir.lower_fun(reference, multiple_results=False)
    kernel = jax.ffi.ffi_lowering(target)

    def cpu_lowering(ctx: mlir.LoweringRuleContext, a, b):
        a_aval, b_aval = ctx.avals_in
        if not (_static(a_aval.shape) and _static(b_aval.shape) and fits(a_aval, b_aval)
                and not _partitioned(ctx) and available()):
            return fallback(ctx, a, b)
        avals_out = list(ctx.avals_out)
        if workspace is not None:
            size = workspace(a_aval.shape, b_aval.shape)
            avals_out.append(jax.core.ShapedArray((size,), jnp.float32))
        return kernel(ctx.replace(avals_out=avals_out), a, b)[:1]

    mlir.register_lowering(prim, fallback)
    mlir.register_lowering(prim, cpu_lowering, platform="cpu")
    return prim


_forward_p = _primitive(
    "maffsrn_conv3x3",
    lambda x, k: (*x[:-1], k[-1]),
    _xla_forward, _FORWARD, _forward_fits, None,
)
_kernel_grad_p = _primitive(
    "maffsrn_conv3x3_kernel_grad",
    lambda x, dy: (3, 3, x[-1], dy[-1]),
    _xla_kernel_grad, _KERNEL_GRAD, _kernel_grad_fits,
    # Summed over the N * H image rows.
    lambda x, dy: _chunks(x[0] * x[1]) * 9 * x[-1] * dy[-1],
)
_outer_sum_p = _primitive(
    "maffsrn_pixel_outer_sum",
    lambda a, g: (a[-1], g[-1]),
    _xla_outer_sum, _OUTER_SUM, _outer_sum_fits,
    lambda a, g: _chunks(math.prod(a[:-1])) * a[-1] * g[-1],
)


def _forward_batched(args, dims):
    x, kernel = args
    x_dim, kernel_dim = dims
    if kernel_dim is not None:  # a kernel per mapped element: XLA's batched convolution
        return jax.vmap(_xla_forward, in_axes=dims)(x, kernel), 0
    # One kernel for all: the mapped axis joins the images of one call.
    x = jnp.moveaxis(x, x_dim, 0)
    y = _forward_p.bind(x.reshape(-1, *x.shape[2:]), kernel)
    return y.reshape(*x.shape[:2], *y.shape[1:]), 0


def _reference_batched(reference):
    # A separate sum for each mapped element, which one call of the kernels cannot make:
    # XLA's batched ops instead of a loop of calls.
    return lambda args, dims: (jax.vmap(reference, in_axes=dims)(*args), 0)


batching.primitive_batchers[_forward_p] = _forward_batched
batching.primitive_batchers[_kernel_grad_p] = _reference_batched(_xla_kernel_grad)
batching.primitive_batchers[_outer_sum_p] = _reference_batched(_xla_outer_sum)


# --- The differentiable functions the layers call --------------------------------------------


def _manual(*arrays: jax.Array) -> bool:
    """Whether any array is typed as varying over (or reduced across) manual mesh axes.

    Inside a `shard_map` that checks these types, a custom VJP's gradients would have to carry
    them; XLA's own ops do, so the functions below use those there.
    """
    for a in arrays:
        mat = getattr(jax.typeof(a), "manual_axis_type", None)
        if mat is not None and (mat.varying or mat.unreduced or mat.reduced):
            return True
    return False


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' 3x3 convolution, stride 1: [N, H, W, C] x [3, 3, C, O] -> [N, H, W, O], float32.

    The same function as `jax.lax.conv_general_dilated` with padding 1 (NHWC, HWIO), on the
    kernels where they serve the program. For shapes that `supports` accepts.
    """
    return _xla_forward(x, kernel) if _manual(x, kernel) else _conv3x3(x, kernel)


@jax.custom_vjp
def _conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return _forward_p.bind(x, kernel)


def _conv3x3_fwd(x, kernel):
    return _forward_p.bind(x, kernel), (x, kernel)


def _conv3x3_bwd(residuals, g):
    x, kernel = residuals
    # d/dx is the 'same' convolution of g with the kernel rotated by 180 degrees and its
    # input and output channels swapped.
    dx = _forward_p.bind(g, jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2)))
    return dx, _kernel_grad_p.bind(x, g)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _outer_sum(a: jax.Array, g: jax.Array) -> jax.Array:
    """a.T @ g over pixels, [P, C] x [P, O] -> [C, O]; O (or else C) in whole registers."""
    if not _whole_registers(g.shape[-1]):
        return _outer_sum(g, a).T
    return _outer_sum_p.bind(a, g)


def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel, [P, C] x [C, O] -> [P, O] float32: a 1x1 convolution over flattened pixels.

    The product and the input gradient stay XLA's; the kernel gradient, a sum over all P
    pixels that Eigen runs slowly for so few channels, is `MaffsrnPixelOuterSum`. For
    shapes that `supports_pointwise` accepts.
    """
    return x @ kernel if _manual(x, kernel) else _pointwise(x, kernel)


@jax.custom_vjp
def _pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return x @ kernel


def _pointwise_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _pointwise_bwd(residuals, g):
    x, kernel = residuals
    return g @ kernel.T, _outer_sum(x, g)


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)
