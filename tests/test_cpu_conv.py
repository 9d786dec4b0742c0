"""The AVX-512 3x3 convolution kernels (maffsrn_jax.cpu_conv) against XLA's convolution.

The kernels only run on x86-64 CPUs with AVX-512 and a C++ compiler; elsewhere these tests
skip (and the layers keep XLA's convolution, which the model parity tests cover).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maffsrn_jax import cpu_conv, layers
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO

needs_kernels = pytest.mark.skipif(
    not cpu_conv.available(),
    reason="the AVX-512 kernels need an x86-64 CPU with AVX-512 and a C++ compiler",
)


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


@needs_kernels
def test_layers_route_only_supported_convolutions_to_the_kernels():
    def custom_calls(features_in: int, features: int, dtype=jnp.float32, k: int = 3) -> int:
        conv = layers.Conv(features, k, dtype=dtype)
        x = jnp.ones((1, 8, 8, features_in))
        params = conv.init(jax.random.key(0), x)
        fn = jax.grad(lambda p: jnp.sum(conv.apply(p, x)))
        return str(jax.make_jaxpr(fn)(params)).count("ffi_call")

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
    assert list((tmp_path / "cache" / "maffsrn_jax").iterdir()) == []


def test_the_build_is_compiled_once_and_renamed_into_place(tmp_path, monkeypatch):
    # A stand-in compiler that writes its output file (the last argument) and logs each run.
    log = tmp_path / "runs"
    fake = tmp_path / "cxx"
    fake.write_text(f'#!/bin/sh\necho run >> {log}\nfor a; do out=$a; done\necho lib > "$out"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    built = cpu_conv._build(str(fake))
    assert built.parent == tmp_path / "cache" / "maffsrn_jax" and built.suffix == ".so"
    assert cpu_conv._build(str(fake)) == built
    assert log.read_text().count("run") == 1  # the second call found the cached library
    assert sorted(p.name for p in built.parent.iterdir()) == [built.name]  # no temporaries
