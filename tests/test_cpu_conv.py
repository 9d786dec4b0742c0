"""The AVX-512 3x3 convolution kernels (maffsrn_jax.cpu_conv) against XLA's convolution, and
the rules for building, loading and lowering them.

The kernels only run on x86-64 CPUs with AVX-512 and a C++ compiler; elsewhere the tests that
run them skip (and the layers keep XLA's convolution, which the model parity tests cover).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maffsrn_jax import cpu_conv, layers
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO


@pytest.fixture
def kernels() -> None:
    # Asked when a test runs, not when pytest collects: the first ask builds the library.
    if not cpu_conv.available():
        pytest.skip("the AVX-512 kernels need an x86-64 CPU with AVX-512 and a C++ compiler")


needs_kernels = pytest.mark.usefixtures("kernels")


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )


def relative_error(got: jax.Array, want: jax.Array) -> float:
    return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


@needs_kernels
@pytest.mark.parametrize(
    "shape, features",
    [
        ((2, 5, 7, 32), 32),  # narrower than one pixel block; every block touches an edge
        ((1, 1, 1, 16), 16),  # one pixel: only the centre tap is inside the image
        ((3, 13, 29, 48), 64),  # blocks of 6 pixels with a remainder; 4 output registers
        ((2, 24, 26, 32), 48),  # interior blocks, a 2-pixel remainder, 3 output registers
        ((1, 2, 25, 64), 16),  # 24-pixel blocks; kernel-gradient channel blocks of 24 + 24 + 16
    ],
)
@pytest.mark.slow
def test_forward_and_gradients_match_xla(shape, features):
    kx, kk, kg = jax.random.split(jax.random.key(sum(shape) + features), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (3, 3, shape[-1], features))
    g = jax.random.normal(kg, (*shape[:-1], features))
    y, vjp = jax.vjp(jax.jit(cpu_conv.conv3x3), x, kernel)
    y_ref, vjp_ref = jax.vjp(xla_conv, x, kernel)
    assert y.shape == y_ref.shape
    for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g)), strict=True):
        assert relative_error(got, want) < 1e-5


@needs_kernels
@pytest.mark.parametrize(
    "pixels, in_features, features",
    [(2304, 32, 32), (1000, 64, 32), (777, 32, 8), (5, 8, 32), (3, 16, 48), (100, 24, 16)],
    ids=["32-32", "64-32", "32-8-transposed", "8-32", "few-pixels", "24-16"],
)
def test_pointwise_gradients_match_xla(pixels, in_features, features):
    kx, kk, kg = jax.random.split(jax.random.key(pixels), 3)
    x = jax.random.normal(kx, (pixels, in_features))
    kernel = jax.random.normal(kk, (in_features, features))
    g = jax.random.normal(kg, (pixels, features))
    y, vjp = jax.vjp(jax.jit(cpu_conv.pointwise), x, kernel)
    dot = lambda a, b: jnp.matmul(a, b, precision="highest")
    y_ref, vjp_ref = jax.vjp(dot, x, kernel)
    for got, want in zip((y, *vjp(g)), (y_ref, *vjp_ref(g)), strict=True):
        assert relative_error(got, want) < 1e-5


def test_layers_route_only_supported_convolutions_to_the_kernels():
    def custom_calls(features_in: int, features: int, dtype=jnp.float32, k: int = 3) -> int:
        conv = layers.Conv(features, k, dtype=dtype)
        x = jnp.ones((1, 8, 8, features_in))
        params = conv.init(jax.random.key(0), x)
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(conv.apply(p, x))))(params)
        return len(re.findall(r"\bmaffsrn_(conv3x3|pixel_outer_sum)", str(jaxpr)))

    assert custom_calls(32, 32) == 3  # forward, input gradient, kernel gradient
    assert custom_calls(32, 48) == 3
    assert custom_calls(3, 32) == 0  # the input's channels are not whole registers
    assert custom_calls(32, 12) == 0  # nor are the output's (the x2 tail)
    assert custom_calls(32, 32, jnp.bfloat16) == 0
    assert custom_calls(32, 32, k=5) == 0
    # 1x1: only the kernel gradient, when either channel count is whole registers.
    assert custom_calls(32, 8, k=1) == 1
    assert custom_calls(8, 32, k=1) == 1
    assert custom_calls(8, 8, k=1) == 0
    assert custom_calls(32, 32, jnp.bfloat16, k=1) == 0


@needs_kernels
@pytest.mark.slow
def test_model_gradients_match_the_xla_convolution_path(monkeypatch):
    model = MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    x = jnp.asarray(np.random.default_rng(0).random((2, 16, 18, 3), dtype=np.float32))
    target = jnp.asarray(np.random.default_rng(1).random((2, 32, 36, 3), dtype=np.float32))
    params = model.init(jax.random.key(0), x)["params"]

    def loss_and_grads():
        loss = lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, x) - target))
        return jax.jit(jax.value_and_grad(loss))(params)

    fast = loss_and_grads()
    monkeypatch.setattr(cpu_conv, "supports", lambda *_: False)
    monkeypatch.setattr(cpu_conv, "supports_pointwise", lambda *_: False)
    plain = loss_and_grads()
    np.testing.assert_allclose(fast[0], plain[0], rtol=1e-6)
    for got, want in zip(jax.tree.leaves(fast[1]), jax.tree.leaves(plain[1]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(want))))


_DIGEST = textwrap.dedent(
    """
    import hashlib, os, sys
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: int(sys.argv[1])]))
    import jax, numpy as np
    from maffsrn_jax import cpu_conv
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (4, 20, 30, 32))
    kernel = jax.random.normal(k[1], (3, 3, 32, 32))
    y, vjp = jax.vjp(cpu_conv.conv3x3, x, kernel)
    dx, dk = vjp(jax.random.normal(k[2], y.shape))
    print(hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in (y, dx, dk))).hexdigest())
    """
)


@needs_kernels
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.slow
def test_results_do_not_depend_on_the_number_of_threads():
    # XLA:CPU sizes its thread pool, which the kernels share out their rows to, by the CPUs
    # the process may use. The kernel gradient is a sum over rows: its order must not follow.
    digests = {
        subprocess.run(
            [sys.executable, "-c", _DIGEST, str(n)], cwd=REPO, check=True, capture_output=True,
            text=True,
        ).stdout.strip()
        for n in (1, 2)
    }
    assert len(digests) == 1 and all(len(d) == 64 for d in digests)


def test_opt_out_keeps_xla_convolution(monkeypatch):
    monkeypatch.setenv(cpu_conv.OPT_OUT_ENV, "0")
    cpu_conv.available.cache_clear()
    try:
        assert not cpu_conv.available()
        assert not cpu_conv.supports(32, 32, jnp.float32)
    finally:
        monkeypatch.delenv(cpu_conv.OPT_OUT_ENV)
        cpu_conv.available.cache_clear()


def test_a_failed_build_warns_once_and_leaves_nothing_behind(tmp_path, monkeypatch, caplog):
    if cpu_conv.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the kernels are only built on x86-64")
    broken = tmp_path / "cxx"
    broken.write_text("#!/bin/sh\necho 'cpu_conv.cc:1: error: no compiler here' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cpu_conv.available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert not cpu_conv.available()
            assert not cpu_conv.available()  # decided once per process
    finally:
        cpu_conv.available.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "cpu_conv.cc" in warnings[0] and "no compiler here" in warnings[0]
    assert "\n" not in warnings[0]
    assert list((tmp_path / "cache" / "maffsrn_jax" / "cpu_conv").iterdir()) == []


# --- Loading: only a private, recorded library ------------------------------------------------

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc)")


@pytest.fixture
def libraries(tmp_path, monkeypatch):
    """A private cache, a stand-in compiler that builds a tiny library answering `which() == 2`
    and logs each run, and a planted library answering 1 whose loading creates a marker file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log, marker = tmp_path / "compiler-runs", tmp_path / "planted-was-loaded"
    (tmp_path / "rebuilt.c").write_text("int which(void) { return 2; }\n")
    compiler = tmp_path / "cxx"
    compiler.write_text(
        f'#!/bin/sh\necho run >> {log}\nfor a; do out=$a; done\n'
        f'exec cc -shared -fPIC -o "$out" {tmp_path / "rebuilt.c"}\n'
    )
    compiler.chmod(0o755)
    (tmp_path / "planted.c").write_text(textwrap.dedent(f"""
        #include <stdio.h>
        __attribute__((constructor)) static void planted(void) {{
          FILE* f = fopen("{marker}", "w");
          if (f) fclose(f);
        }}
        int which(void) {{ return 1; }}
    """))
    planted = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(planted), str(tmp_path / "planted.c")],
                   check=True)

    class Libraries:
        cache = cpu_conv._cache_dir()
        key = cpu_conv._build_key(str(compiler))

        @staticmethod
        def load() -> int:
            return cpu_conv._load(str(compiler)).which()

        @staticmethod
        def compiles() -> int:
            return log.read_text().count("run") if log.exists() else 0

        @staticmethod
        def plant() -> os.PathLike:
            """Puts the planted library where a build would be, with a matching record."""
            directory = Libraries.cache
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            data = planted.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            (directory / cpu_conv._record_name(Libraries.key)).write_text(digest + "\n")
            target = directory / cpu_conv._library_name(Libraries.key, digest)
            target.write_bytes(data)
            target.chmod(0o700)
            return target

        @staticmethod
        def planted_was_loaded() -> bool:
            return marker.exists()

    return Libraries


@needs_cc
def test_the_library_is_built_once_recorded_and_reused(libraries):
    assert libraries.load() == 2 and libraries.compiles() == 1
    assert libraries.load() == 2 and libraries.compiles() == 1  # the cached library
    cache = libraries.cache
    assert cache.stat().st_mode & 0o777 == 0o700
    record = cache / cpu_conv._record_name(libraries.key)
    digest = record.read_text().strip()
    library = cache / cpu_conv._library_name(libraries.key, digest)
    assert hashlib.sha256(library.read_bytes()).hexdigest() == digest
    assert library.stat().st_mode & 0o022 == 0 and record.stat().st_mode & 0o022 == 0
    assert sorted(p.name for p in cache.iterdir()) == sorted([record.name, library.name])


@needs_cc
def test_a_private_recorded_library_is_what_loads(libraries):
    # The planted library passes every check here: this is what the tests below would see
    # if a check were missing.
    libraries.plant()
    assert libraries.load() == 1 and libraries.planted_was_loaded()
    assert libraries.compiles() == 0


def _world_writable(path):
    path.chmod(0o666)


def _group_writable(path):
    path.chmod(0o620)


def _foreign(path):
    os.chown(path, os.getuid() + 4242, -1)


def _wrong_hash(path):
    # Another file under the recorded name (a hash the record does not hold).
    path.write_bytes(path.read_bytes() + b"\0")


def _symlink(path):
    real = path.with_name("elsewhere.so")
    path.rename(real)
    path.symlink_to(real)


def _record_world_writable(path):
    next(path.parent.glob("*.sha256")).chmod(0o666)


@needs_cc
@pytest.mark.parametrize(
    "tamper",
    [_world_writable, _group_writable, _foreign, _wrong_hash, _symlink, _record_world_writable],
    ids=lambda f: f.__name__.strip("_"),
)
def test_a_planted_library_is_never_loaded(libraries, tamper):
    if tamper is _foreign and os.getuid() != 0:
        pytest.skip("giving a file to another user needs root")
    tamper(libraries.plant())
    assert libraries.load() == 2  # rebuilt
    assert libraries.compiles() == 1
    assert not libraries.planted_was_loaded()
    assert libraries.load() == 2 and libraries.compiles() == 1  # and the rebuild is cached


@needs_cc
@pytest.mark.parametrize("how", ["world-writable", "foreign"])
def test_a_cache_directory_others_can_write_is_not_used(libraries, tmp_path, monkeypatch, caplog,
                                                         how):
    if how == "foreign" and os.getuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    libraries.plant()
    if how == "foreign":
        os.chown(libraries.cache, os.getuid() + 4242, -1)
    else:
        libraries.cache.chmod(0o777)
    before = sorted(p.name for p in libraries.cache.iterdir())
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with caplog.at_level(logging.WARNING):
        assert libraries.load() == 2
    assert not libraries.planted_was_loaded() and libraries.compiles() == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "temporary directory" in warnings[0]
    assert sorted(p.name for p in libraries.cache.iterdir()) == before  # nothing written there
    assert list(scratch.iterdir()) == []  # the private build directory is gone


_TRACE_THEN_LOWER = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp
    import maffsrn_jax
    from maffsrn_jax import cpu_conv, layers, models
    built = lambda: os.path.exists(sys.argv[1])
    print("imported", built())
    model = models.MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v, x: jnp.sum(model.apply(v, x))))(variables, x)
    print("traced", built(), "maffsrn_conv3x3" in str(jaxpr))
    jax.jit(model.apply).lower(variables, x)
    print("lowered", built())
    """
)


@pytest.mark.slow
def test_the_library_is_built_on_first_lowering_not_on_import_or_trace(tmp_path):
    if cpu_conv.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the kernels are only built on x86-64")
    log = tmp_path / "compiler-runs"
    compiler = tmp_path / "cxx"
    # A compiler that fails: the build is then one warning, and the run goes on without it.
    compiler.write_text(f"#!/bin/sh\necho run >> {log}\nexit 1\n")
    compiler.chmod(0o755)
    env = {**os.environ, "CXX": str(compiler), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop(cpu_conv.OPT_OUT_ENV, None)
    run = subprocess.run([sys.executable, "-c", _TRACE_THEN_LOWER, str(log)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["imported False", "traced False True", "lowered True"]
    assert log.read_text().count("run") == 1
    assert run.stderr.count("could not build") == 1


# --- Dimension checks in the handlers ---------------------------------------------------------


def _f32(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


@needs_kernels
@pytest.mark.parametrize(
    "target, args, results, message",
    [
        # The forward pass: the result must be [N, H, W, O].
        (cpu_conv._FORWARD, [(2, 8, 8, 32), (3, 3, 32, 16)], [_f32(1, 8, 8, 16)], "y must"),
        (cpu_conv._FORWARD, [(2, 8, 8, 32), (3, 3, 32, 16)], [_f32(2, 8, 8, 32)], "y must"),
        (cpu_conv._FORWARD, [(2, 8, 8, 32), (3, 3, 16, 16)], [_f32(2, 8, 8, 16)], "kernel must"),
        (cpu_conv._FORWARD, [(2, 8, 8, 32), (5, 5, 32, 16)], [_f32(2, 8, 8, 16)], "kernel must"),
        (cpu_conv._FORWARD, [(2, 8, 8, 32), (3, 3, 32, 20)], [_f32(2, 8, 8, 20)], "kernel must"),
        (cpu_conv._FORWARD, [(2, 8, 8, 128), (3, 3, 128, 16)], [_f32(2, 8, 8, 16)], "x must"),
        (cpu_conv._FORWARD, [(16, 8, 32), (3, 3, 32, 16)], [_f32(16, 8, 16)], "x must"),
        # The 3x3 kernel gradient: dy over the same pixels, dkernel and workspace sized.
        (cpu_conv._KERNEL_GRAD, [(2, 8, 8, 32), (1, 8, 8, 16)],
         [_f32(3, 3, 32, 16), _f32(16 * 9 * 32 * 16)], "dy must"),
        (cpu_conv._KERNEL_GRAD, [(2, 8, 8, 32), (2, 8, 8, 16)],
         [_f32(3, 3, 16, 16), _f32(16 * 9 * 32 * 16)], "dkernel must"),
        (cpu_conv._KERNEL_GRAD, [(2, 8, 8, 32), (2, 8, 8, 16)],
         [_f32(3, 3, 32, 16), _f32(9 * 32 * 16)], "workspace"),
        # The pixel outer sum.
        (cpu_conv._OUTER_SUM, [(100, 24), (99, 16)], [_f32(24, 16), _f32(16 * 24 * 16)],
         "same pixels"),
        (cpu_conv._OUTER_SUM, [(100, 24), (100, 16)], [_f32(16, 24), _f32(16 * 24 * 16)],
         "result must"),
        (cpu_conv._OUTER_SUM, [(100, 24), (100, 16)], [_f32(24, 16), _f32(24 * 16)], "workspace"),
        (cpu_conv._OUTER_SUM, [(100, 24), (100, 8)], [_f32(24, 8), _f32(16 * 24 * 8)], "g must"),
    ],
)
def test_the_handlers_reject_buffers_of_the_wrong_dimensions(target, args, results, message):
    call = jax.ffi.ffi_call(target, results)
    arrays = [jnp.ones(shape, jnp.float32) for shape in args]
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(jax.jit(call)(*arrays))


# --- Lowering: per platform, as parallel as XLA's ---------------------------------------------


def _model_step(model: MAFFSRN, batch: int = 2):
    x = jnp.asarray(np.random.default_rng(0).random((batch, 16, 18, 3), dtype=np.float32))
    target = jnp.asarray(np.random.default_rng(1).random((batch, 32, 36, 3), dtype=np.float32))
    params = model.init(jax.random.key(0), x[:1])["params"]
    loss = lambda p, x, t: jnp.mean(jnp.abs(model.apply({"params": p}, x) - t))
    return jax.grad(loss), (params, x, target)


@needs_kernels
@pytest.mark.slow
def test_kernels_are_chosen_per_platform_when_lowering():
    step, args = _model_step(MAFFSRN(scale=2, n_ffgs=1, n_mabs=2))
    on_cpu = jax.jit(step).lower(*args).as_text()
    assert cpu_conv.KERNEL_PREFIX in on_cpu
    # Traced here, on a CPU with the kernels; lowered for a GPU, they are not in the program.
    on_gpu = jax.export.export(jax.jit(step), platforms=["cuda"])(*args).mlir_module()
    assert cpu_conv.KERNEL_PREFIX not in on_gpu and "convolution" in on_gpu


class _TwoConvs(layers.nn.Module):
    @layers.nn.compact
    def __call__(self, x):
        return layers.Conv(16, 1)(jax.nn.relu(layers.Conv(32, 3)(x)))


@needs_kernels
def test_vmap_folds_into_the_kernels_without_a_loop(monkeypatch):
    # Per-example gradients of a 3x3 and a 1x1 convolution: the mapped axis joins the images
    # of the kernels' forward pass, and the gradients' per-example sums are XLA's batched ops.
    net = _TwoConvs()
    x = jax.random.normal(jax.random.key(0), (3, 1, 8, 10, 32))
    params = net.init(jax.random.key(1), x[0])
    grad = jax.grad(lambda p, x: jnp.sum(jnp.sin(net.apply(p, x))))
    per_example = jax.jit(jax.vmap(grad, in_axes=(None, 0)))
    compiled = per_example.lower(params, x).compile().as_text()
    assert cpu_conv.KERNEL_PREFIX + "conv3x3_forward" in compiled
    assert not re.search(r"\bwhile\(", compiled)
    fast = per_example(params, x)
    monkeypatch.setattr(cpu_conv, "supports", lambda *_: False)
    monkeypatch.setattr(cpu_conv, "supports_pointwise", lambda *_: False)
    plain = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(params, x)
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(want))))


_SHARDED = textwrap.dedent(
    """
    import json, re
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec
    from maffsrn_jax import cpu_conv
    from maffsrn_jax.models import MAFFSRN
    model = MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    x, t = jnp.ones((4, 16, 16, 3)), jnp.ones((4, 32, 32, 3))
    params = model.init(jax.random.key(0), x[:1])["params"]
    loss = lambda p, x, t: jnp.mean(jnp.abs(model.apply({"params": p}, x) - t))
    step = jax.jit(jax.grad(loss))
    mesh = jax.make_mesh((2,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    batch = NamedSharding(mesh, PartitionSpec("batch"))
    sharded = step.lower(jax.device_put(params, NamedSharding(mesh, PartitionSpec())),
                         jax.device_put(x, batch), jax.device_put(t, batch)).compile().as_text()
    single = step.lower(params, x, t).compile().as_text()
    collectives = re.findall(
        r"\\b(?:all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\\(",
        sharded)
    # Inside shard_map the code is per device: the kernels stay where the manual axes are not
    # typed (check_vma=False), XLA's ops stand in where they are; both give XLA's numbers.
    x, k = jax.random.normal(jax.random.key(1), (4, 8, 9, 32)), jnp.ones((3, 3, 32, 16))
    P = PartitionSpec
    def body(conv, reduce):
        def grads(x, k):
            dx, dk = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1))(x, k)
            return dx, jax.lax.psum(dk, "batch") if reduce else dk
        return grads
    want = jax.jit(body(cpu_conv._xla_forward, False))(x, k)
    errors, kernels = [], []
    for check in (False, True):
        f = jax.jit(jax.shard_map(body(cpu_conv.conv3x3, not check), mesh=mesh,
                                  in_specs=(P("batch"), P()), out_specs=(P("batch"), P()),
                                  check_vma=check))
        kernels.append(f.lower(x, k).compile().as_text().count(cpu_conv.KERNEL_PREFIX))
        errors.append(max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
                          for a, b in zip(f(x, k), want)))
    print(json.dumps({"collectives": len(collectives),
                      "kernels": single.count(cpu_conv.KERNEL_PREFIX),
                      "shard_map_kernels": kernels, "shard_map_errors": errors}))
    """
)


@needs_kernels
@pytest.mark.slow
def test_a_sharded_step_has_no_more_collectives_than_xla_alone():
    def compiled(**env: str) -> dict:
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **env}
        out = subprocess.run([sys.executable, "-c", _SHARDED], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    with_kernels = compiled()
    without = compiled(**{cpu_conv.OPT_OUT_ENV: "0"})
    assert with_kernels["kernels"] > 0 and without["kernels"] == 0  # a one-device step uses them
    assert with_kernels["collectives"] <= without["collectives"]
    assert with_kernels["shard_map_kernels"][0] > 0 and without["shard_map_kernels"] == [0, 0]
    assert max(with_kernels["shard_map_errors"] + without["shard_map_errors"]) < 1e-5
