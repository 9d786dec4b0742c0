"""Layers under MAFFSRN: PyTorch-initialised, weight-normed convolution and its fast kernels.

`Conv` is what every block of `models.py` is built from. Its parameters mirror PyTorch's
`nn.Conv2d` (HWIO kernel, bias, optional weight-norm gain), its initialisation is PyTorch's,
and on XLA:CPU it routes the shapes MAFFSRN uses through hand-written kernels (1x1 as
matmuls, depthwise as shifted multiply-adds, bias gradients as matrix-vector products,
3x3 convolutions and 1x1 kernel gradients on the AVX-512 kernels of `cpu_conv`, which are
chosen when the program is lowered and become XLA's own ops on other platforms), each with
the reason beside it. Every path computes the same function as
`jax.lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maffsrn_jax import cpu_conv

Dtype = Any


# Eager draws compile one random generator per distinct size (most of `model.init`'s time
# on a CPU); drawing whole buckets of sizes compiles a few.
_MIN_DRAW = 4096


def _torch_uniform(bound: float):
    """PyTorch's default conv init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), +).

    The values are `jax.random.uniform(key, shape, dtype, -bound, bound)`, taken as the
    first prod(shape) of a power-of-two draw: JAX's threefry (partitionable, its default)
    makes element i depend only on the key and i, so that is the same tensor.
    """

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        n = math.prod(shape)
        size = max(_MIN_DRAW, 1 << (n - 1).bit_length())
        return jax.random.uniform(key, (size,), dtype, -bound, bound)[:n].reshape(shape)

    return init


class Conv(nn.Module):
    """2-D convolution with PyTorch's initialisation and optional weight normalisation.

    Input [N, H, W, C_in] -> output [N, H', W', features]. Padding defaults to "same" for
    odd kernels (dilation * (k - 1) / 2 on each side), as the official `conv_block` pads.

    With `weight_norm`, the kernel is `gain * kernel / ||kernel||` (norm over H, W, C_in per
    output channel, like `torch.nn.utils.weight_norm(dim=0)`). Direction and gain stay
    separate parameters because that reparameterisation is what shapes training. The gain
    is stored as [1, 1, 1, features]: 4-D like PyTorch's `weight_g` [out, 1, 1, 1], so that
    AdamP projects it exactly as the reference optimizer does.

    A 1x1 convolution also accepts a list of G inputs [N, H, W, C_in / G] standing for their
    channel concatenation, or with `interleave=True` for `ops.channel_shuffle` of it (the
    FFG fusions): the kernel's rows are regrouped instead, so the concatenated (and shuffled)
    tensor is never written to memory.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dilation: int = 1
    padding: int | None = None
    groups: int = 1
    weight_norm: bool = False
    dtype: Dtype = jnp.float32
    # Plain convolutions only (see `_portable_conv`): what exported graphs are built from.
    portable: bool = False

    @nn.compact
    def __call__(
        self, x: jax.Array | Sequence[jax.Array], *, interleave: bool = False
    ) -> jax.Array:
        parts = list(x) if isinstance(x, list | tuple) else [x]
        k = self.kernel_size
        in_features = sum(p.shape[-1] for p in parts)
        fan_in = in_features // self.groups * k * k
        init = _torch_uniform(1.0 / math.sqrt(fan_in))
        kernel = self.param("kernel", init, (k, k, in_features // self.groups, self.features))
        if self.weight_norm:
            # Initialised to ||kernel||, so the layer starts as the plain init (as in PyTorch).
            gain = self.param("gain", lambda _: _channel_norm(kernel))
            kernel = kernel * (gain / _channel_norm(kernel))
        bias = self.param("bias", init, (self.features,))
        pad = self.dilation * (k - 1) // 2 if self.padding is None else self.padding
        kernel = kernel.astype(self.dtype)
        pointwise = k == 1 and self.stride == 1 and self.groups == 1 and pad == 0
        if (len(parts) > 1 or interleave) and not pointwise:
            raise ValueError(f"only a 1x1 Conv takes a list of inputs ({self.name})")
        if self.portable:
            y = self._portable_conv([p.astype(self.dtype) for p in parts], kernel, pad, interleave)
        elif len(parts) > 1 or interleave:
            y = _pointwise_concat([p.astype(self.dtype) for p in parts], kernel, interleave)
        elif pointwise:
            y = _pointwise_concat([parts[0].astype(self.dtype)], kernel, False)
        elif (
            self.groups == in_features == self.features
            and self.stride == 1
            and 2 * pad == self.dilation * (k - 1)
            and _shifted_depthwise()
        ):
            y = _depthwise(parts[0].astype(self.dtype), kernel, pad, self.dilation)
        elif (
            # Eigen's 256-bit convolution is most of a CPU train step; see `cpu_conv` (which
            # lowers to XLA's convolution off XLA:CPU or where its kernels cannot run).
            k == 3
            and self.stride == self.dilation == self.groups == 1
            and pad == 1
            and cpu_conv.supports(in_features, self.features, self.dtype)
        ):
            y = cpu_conv.conv3x3(parts[0].astype(self.dtype), kernel)
        else:
            y = self._xla_conv(parts[0].astype(self.dtype), kernel, pad)
        if self.portable:
            return y + bias.astype(self.dtype)
        return _add_bias(y, bias.astype(self.dtype))

    def _portable_conv(
        self, parts: list[jax.Array], kernel: jax.Array, pad: int, interleave: bool
    ) -> jax.Array:
        """The same convolution as one `conv_general_dilated`, for export.

        The CPU kernels above flatten pixels with reshape(-1, C) and unroll the depthwise
        taps, which neither traces with symbolic sizes nor maps onto exporters' conv ops.
        A list of inputs is concatenated and the shuffle moves into the kernel's rows.
        """
        x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        if interleave:
            g = len(parts)
            perm = np.concatenate([np.arange(i, kernel.shape[2], g) for i in range(g)])
            kernel = jnp.take(kernel, perm, axis=2)
        return self._xla_conv(x, kernel, pad)

    def _xla_conv(self, x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
        """This layer as XLA's own convolution: [N, H, W, C_in] -> [N, H', W', features]."""
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.stride, self.stride),
            padding=((pad, pad), (pad, pad)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
        )


def _shifted_depthwise() -> bool:
    """Whether depthwise convolutions run as `_depthwise` (shifted multiply-adds).

    Only on XLA:CPU, whose convolution with one group per channel is a slow generic loop. GPU
    backends hand it to cuDNN's depthwise kernels, and there `_depthwise`'s per-image kernel
    gradient would be a serial loop of small kernels.
    """
    return jax.default_backend() == "cpu"


def _sum_pixels(g: jax.Array) -> jax.Array:
    """Sum of [..., C] over every axis but the last, in float32 -> [C].

    Written as a matrix-vector product: XLA:CPU rewrites a plain reduction over this many
    elements into a tree of reduce-windows that measured ~4x slower (gradients of biases and
    of the depthwise kernel are such sums).
    """
    acc = jnp.promote_types(g.dtype, jnp.float32)
    ones = jnp.ones((math.prod(g.shape[:-1]),), acc)
    return ones @ g.reshape(-1, g.shape[-1]).astype(acc)


@jax.custom_vjp
def _add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y + bias over the channel axis, with the bias gradient summed by `_sum_pixels`."""
    return y + bias


def _add_bias_fwd(y, bias):
    return y + bias, None


def _add_bias_bwd(_, g):
    return g, _sum_pixels(g).astype(g.dtype)


_add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _pointwise_concat(parts: list[jax.Array], kernel: jax.Array, interleave: bool) -> jax.Array:
    """1x1 convolution of the channel concatenation of G parts [N, H, W, C] -> [N, H, W, O].

    Computed as sum_g parts[g] @ rows_g(kernel), one matmul per part, so the concatenation
    is never materialised (a copy as large as the activations). With
    `interleave` the input is channel_shuffle(concat(parts), G), whose channel k is channel
    k // G of part k % G, so part g meets kernel rows g, g + G, g + 2G, ...
    """
    w = kernel[0, 0]  # [G * C, O]
    g, c = len(parts), parts[0].shape[-1]
    rows = [w[i::g] if interleave else w[i * c : (i + 1) * c] for i in range(g)]
    # Flattened to [pixels, C] so that the kernel gradient is one plain matrix product
    # (autodiff of a 4-D einsum transposes the activations first, ~3x slower on XLA:CPU),
    # or on AVX-512 CPUs `cpu_conv`'s sum over pixels, faster still.
    fast = cpu_conv.supports_pointwise(c, w.shape[-1], w.dtype)
    matmul = cpu_conv.pointwise if fast else jnp.matmul
    terms = [matmul(p.reshape(-1, c), r) for p, r in zip(parts, rows, strict=True)]
    return functools.reduce(jnp.add, terms).reshape(*parts[0].shape[:-1], w.shape[-1])


def _pad_hw(x: jax.Array, pad: int) -> jax.Array:
    """Zero-pad the two spatial axes of [N, H, W, C] by `pad` on each side."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _shifted_sum(xp: jax.Array, kernel: jax.Array, dilation: int) -> jax.Array:
    """sum over taps (i, j) of shift(xp, i, j) * kernel[i, j, 0]: padded [N, H + 2p, W + 2p, C]
    -> [N, H, W, C]."""
    k = kernel.shape[0]
    h = xp.shape[1] - dilation * (k - 1)
    w = xp.shape[2] - dilation * (k - 1)
    taps = [
        xp[:, i * dilation : i * dilation + h, j * dilation : j * dilation + w] * kernel[i, j, 0]
        for i in range(k)
        for j in range(k)
    ]
    return functools.reduce(jnp.add, taps)


# Images summed per fused loop in the depthwise kernel gradient. XLA:CPU splits a fusion
# with many more terms than this into slower pieces; larger batches take several chunks.
_IMAGES_PER_SUM = 16


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, kernel: jax.Array, pad: int, dilation: int) -> jax.Array:
    """'Same' depthwise convolution [N, H, W, C] x [k, k, 1, C] -> [N, H, W, C].

    XLA:CPU runs a convolution with one group per channel through a slow generic loop (~40x
    slower than this on the MAB's 5x5, forward and backward). The k*k shifted multiply-adds
    fuse into one elementwise loop instead. The gradient is written by hand: left to
    autodiff, every shifted slice would be kept for the kernel gradient and copied.
    """
    return _shifted_sum(_pad_hw(x, pad), kernel, dilation)


def _depthwise_fwd(x, kernel, pad, dilation):
    # The padded input is what the forward pass reads anyway; keeping it saves the
    # backward pass a second pad of the whole batch.
    xp = _pad_hw(x, pad)
    return _shifted_sum(xp, kernel, dilation), (xp, kernel)


def _depthwise_bwd(pad, dilation, residuals, g):
    xp, kernel = residuals
    k, c = kernel.shape[0], kernel.shape[-1]
    n, h, w = g.shape[:3]
    # d/dx: the same 'same' convolution with the kernel flipped.
    dx = _shifted_sum(_pad_hw(g, pad), kernel[::-1, ::-1], dilation)
    # d/dkernel[i, j, c] = sum over n, h, w of shift(x, i, j) * g, per channel. For each
    # kernel row i, the k taps' products are summed over the images by explicit adds into
    # [H, W, k, C]: one fused loop, vectorised over channels, which reads each image's
    # gradient once for the whole row and never stores a product. (A reduction op would
    # not do: XLA:CPU emits it with one scalar accumulator per output, several times
    # slower.) The [H, W, k*k, C] partial sums are then reduced over pixels by one matrix
    # product.
    acc_dtype = jnp.promote_types(g.dtype, jnp.float32)

    def row_products(m: int, i: int) -> jax.Array:
        di = i * dilation
        windows = [xp[m, di : di + h, j * dilation : j * dilation + w] for j in range(k)]
        return jnp.stack(windows, axis=2).astype(acc_dtype) * g[m, :, :, None].astype(acc_dtype)

    chunks = []
    for start in range(0, n, _IMAGES_PER_SUM):
        images = range(start, min(n, start + _IMAGES_PER_SUM))
        rows = [functools.reduce(jnp.add, [row_products(m, i) for m in images]) for i in range(k)]
        chunks.append(jnp.concatenate(rows, axis=2))  # [H, W, k*k, C]
    partial = jnp.stack(chunks).reshape(-1, k * k * c)
    dk = _sum_pixels(partial).reshape(kernel.shape)
    return dx, dk.astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _channel_norm(kernel: jax.Array) -> jax.Array:
    """L2 norm of an HWIO kernel per output channel, shape [1, 1, 1, O]."""
    return jnp.sqrt(jnp.sum(jnp.square(kernel), axis=(0, 1, 2), keepdims=True))


class Scale(nn.Module):
    """A learnable scalar multiplier (the official `Scale`, parameter shape [1])."""

    init_value: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", lambda _: jnp.full((1,), self.init_value, jnp.float32))
        return x * scale.astype(x.dtype)
