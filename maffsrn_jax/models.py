"""MAFFSRN in Flax: multi-attention blocks (MAB) grouped by feature-fusion groups (FFG).

Muqeet et al., "Ultra Lightweight Image Super-Resolution with Multi-Attention Layers"
(AIM 2020). Where the paper and the authors' PyTorch code disagree, this follows the code,
because that is what trained checkpoints expect (see `../shared/reference/maffsrn-facts.md`).

Layout: images are NHWC, convolution kernels HWIO. Module and parameter names mirror the
official state_dict (`head`, `body_{i}.b{j}.conv00`, `tail.tail_k3`, ...) so that conversion
is a renaming, not a guess.

    x -> head (WN 3x3) -> FFG x n_ffgs -> tail (PS(0.5 WN3x3) + PS(0.5 WN5x5)) -> + bicubic(x)
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

from maffsrn_jax import ops

# The ESA branch runs a stride-2 conv and then a 7x7/3 max pool without padding, so the
# pool needs at least 7 rows: ceil(13 / 2) = 7.
MIN_INPUT_SIZE = 13
LEAKY_SLOPE = 0.05

FUSIONS = ("mbff", "bff", "hff")

# ESA convolution branches applied in parallel to the pooled map and summed, as
# (kernel, dilation) for conv1, conv2[, conv3] in the official naming. The paper's Table 3
# ablates the pair; the default is the official "3x3 + dilated 3x3".
ESA_CONVS: dict[str, tuple[tuple[int, int], ...]] = {
    "3x3+dil3x3": ((3, 1), (3, 2)),
    "3x3+3x3": ((3, 1), (3, 1)),
    "3x3x3": ((3, 1), (3, 1), (3, 1)),
    "3x3+5x5": ((3, 1), (5, 1)),
    "5x5+3x3": ((5, 1), (3, 1)),
}

Dtype = Any


# Eager draws compile one random generator per distinct size (~1 s each on a 2-core CPU,
# most of `model.init`'s time); drawing whole buckets of sizes compiles a few.
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
        if len(parts) > 1 or interleave:
            if not pointwise:
                raise ValueError(f"only a 1x1 Conv takes a list of inputs ({self.name})")
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
        else:
            y = jax.lax.conv_general_dilated(
                parts[0].astype(self.dtype),
                kernel,
                window_strides=(self.stride, self.stride),
                padding=((pad, pad), (pad, pad)),
                rhs_dilation=(self.dilation, self.dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=self.groups,
            )
        return _add_bias(y, bias.astype(self.dtype))


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
    is never materialised (that copy cost ~17% of the x4 inference time). With
    `interleave` the input is channel_shuffle(concat(parts), G), whose channel k is channel
    k // G of part k % G, so part g meets kernel rows g, g + G, g + 2G, ...
    """
    w = kernel[0, 0]  # [G * C, O]
    g, c = len(parts), parts[0].shape[-1]
    rows = [w[i::g] if interleave else w[i * c : (i + 1) * c] for i in range(g)]
    # Flattened to [pixels, C] so that the kernel gradient is one plain matrix product
    # (autodiff of a 4-D einsum transposes the activations first, ~3x slower on XLA:CPU).
    terms = [p.reshape(-1, c) @ r for p, r in zip(parts, rows, strict=True)]
    return functools.reduce(jnp.add, terms).reshape(*parts[0].shape[:-1], w.shape[-1])


def _shifted_sum(x: jax.Array, kernel: jax.Array, pad: int, dilation: int) -> jax.Array:
    """sum over taps (i, j) of shift(x, i, j) * kernel[i, j, 0]: [N, H, W, C] -> [N, H', W', C]."""
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h = xp.shape[1] - dilation * (k - 1)
    w = xp.shape[2] - dilation * (k - 1)
    taps = [
        xp[:, i * dilation : i * dilation + h, j * dilation : j * dilation + w] * kernel[i, j, 0]
        for i in range(k)
        for j in range(k)
    ]
    return functools.reduce(jnp.add, taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, kernel: jax.Array, pad: int, dilation: int) -> jax.Array:
    """'Same' depthwise convolution [N, H, W, C] x [k, k, 1, C] -> [N, H, W, C].

    XLA:CPU runs a convolution with one group per channel through a slow generic loop (~40x
    slower than this on the MAB's 5x5, forward and backward). The k*k shifted multiply-adds
    fuse into one elementwise loop instead. The gradient is written by hand: left to
    autodiff, every shifted slice would be kept for the kernel gradient and copied.
    """
    return _shifted_sum(x, kernel, pad, dilation)


def _depthwise_fwd(x, kernel, pad, dilation):
    return _shifted_sum(x, kernel, pad, dilation), (x, kernel)


def _depthwise_bwd(pad, dilation, residuals, g):
    x, kernel = residuals
    k, c = kernel.shape[0], kernel.shape[-1]
    # d/dx: the same 'same' convolution with the kernel flipped.
    dx = _shifted_sum(g, kernel[::-1, ::-1], pad, dilation)
    # d/dkernel[i, j, c] = sum over n, h, w of shift(x, i, j) * g, per channel. One image at a
    # time: its padded input and gradient (~0.6 MB at 48x48x32) stay in cache for all k*k
    # taps, where whole-batch windows would stream from memory k*k times.
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
    h, w = g.shape[1:3]

    def image(n, dk):
        xn = jax.lax.dynamic_index_in_dim(xp, n, keepdims=False).astype(acc_dtype)
        gn = jax.lax.dynamic_index_in_dim(g, n, keepdims=False).astype(acc_dtype)
        taps = [
            _sum_pixels(xn[i * dilation : i * dilation + h, j * dilation : j * dilation + w] * gn)
            for i in range(k)
            for j in range(k)
        ]
        return dk + jnp.stack(taps)

    dk = jax.lax.fori_loop(0, g.shape[0], image, jnp.zeros((k * k, c), acc_dtype))
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


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


def leaky_relu(x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, LEAKY_SLOPE)


class MAB(nn.Module):
    """Multi-attention block: [N, H, W, C] -> [N, H, W, C], H, W >= 13.

    Two 3x3 convs, then the features are gated by enhanced spatial attention (ESA: reduce
    channels to C/4, stride-2 conv, 7x7/3 max pool, parallel ESA convs, nearest upsampling)
    and by cost-efficient attention (CEA: 1x1 conv + depthwise 5x5). No residual inside.
    """

    n_feats: int = 32
    reduction: int = 4
    use_cea: bool = True
    esa_convs: tuple[tuple[int, int], ...] = ESA_CONVS["3x3+dil3x3"]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, r = self.n_feats, self.n_feats // self.reduction
        conv = lambda *a, **k: Conv(*a, dtype=self.dtype, **k)

        x = conv(n, 3, name="conv00")(leaky_relu(conv(n, 3, name="conv01")(x)))

        # ESA: attention from a heavily downsampled (1/6) view, so it sees a wide context.
        rc = conv(r, 1, name="reduce_channels")(x)
        rs = conv(r, 3, stride=2, padding=1, name="reduce_spatial_size")(rc)
        pooled = nn.max_pool(rs, (7, 7), strides=(3, 3), padding="VALID")
        branches = [
            leaky_relu(conv(r, k, dilation=d, name=f"conv{i + 1}")(pooled))
            for i, (k, d) in enumerate(self.esa_convs)
        ]
        context = sum(branches[1:], branches[0])
        up = ops.nearest_resize(context, rc.shape[1:3]) + rc
        esa = nn.sigmoid(nn.relu(conv(n, 1, name="increase_channels")(up)))
        out = esa * x

        if self.use_cea:
            cea = conv(n, 1, name="bottom11")(x)
            cea = nn.sigmoid(conv(n, 5, groups=n, name="bottom11_dw")(cea))
            out = out * cea
        return out


class FFG(nn.Module):
    """Feature-fusion group: [N, H, W, C] -> [N, H, W, C].

    MAB outputs x0..x3 (residuals on the middle blocks only, as the official code) are fused
    by weight-normed 1x1 reductions of channel-shuffled concatenations:
      mbff (M-BFF, official): r1 = R1(s[x0, x1]); r2 = R2(s[r1, x2]); r = R3(s[r2, x3])
      bff  (binary tree):     R3(s[R1(s[x0, x1]), R2(s[x2, x3])])
      hff  (hierarchical):    R(s[x0, x1, x2, x3]) with a single 4C -> C reduction
    out = res_scale * r + x_scale * x.
    """

    n_feats: int = 32
    n_mabs: int = 4
    fusion: str = "mbff"
    channel_shuffle: bool = True
    use_cea: bool = True
    esa_convs: tuple[tuple[int, int], ...] = ESA_CONVS["3x3+dil3x3"]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feats, h = [], x
        for j in range(self.n_mabs):
            y = MAB(
                self.n_feats,
                use_cea=self.use_cea,
                esa_convs=self.esa_convs,
                dtype=self.dtype,
                name=f"b{j}",
            )(h)
            if 0 < j < self.n_mabs - 1:
                y = y + h
            feats.append(y)
            h = y

        counter = iter(range(1, 2 * self.n_mabs))

        def fuse(parts: list[jax.Array], name: str | None = None) -> jax.Array:
            # 1x1 conv of channel_shuffle(concat(parts)); Conv takes the parts directly and
            # regroups its kernel rows rather than materialising the shuffled concatenation.
            name = name or f"reduction{next(counter)}"
            conv = Conv(self.n_feats, 1, weight_norm=True, dtype=self.dtype, name=name)
            return conv(parts, interleave=self.channel_shuffle)

        if self.fusion == "mbff":
            r = feats[0]
            for y in feats[1:]:
                r = fuse([r, y])
        elif self.fusion == "bff":
            level = feats
            while len(level) > 1:
                level = [fuse(level[i : i + 2]) for i in range(0, len(level), 2)]
            r = level[0]
        else:  # hff
            r = fuse(feats, name="reduction")
        return Scale(1.0, name="res_scale")(r) + Scale(1.0, name="x_scale")(x)


class Tail(nn.Module):
    """Upsampler: [N, H, W, C] -> [N, sH, sW, 3].

    PS(0.5 * WN-Conv3x3(x)) + PS(0.5 * WN-Conv5x5(x)). Pixel shuffle is linear, so the two
    branches are summed before a single shuffle.
    """

    scale: int
    n_colors: int = 3
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.n_colors * self.scale**2
        k3 = Conv(out, 3, weight_norm=True, dtype=self.dtype, name="tail_k3")(x)
        k5 = Conv(out, 5, weight_norm=True, dtype=self.dtype, name="tail_k5")(x)
        y = Scale(0.5, name="scale_k3")(k3) + Scale(0.5, name="scale_k5")(k5)
        return ops.pixel_shuffle(y, self.scale)


class MAFFSRN(nn.Module):
    """MAFFSRN (n_ffgs=4) and MAFFSRN-L (n_ffgs=8).

    Input [N, H, W, 3] float RGB in [0, 1] with H, W >= 13; output [N, sH, sW, 3] float32,
    unclipped. `dtype` is the compute dtype (float32, or bfloat16 for speed); parameters and
    the bicubic skip stay float32.

    Ablation switches of the paper: `fusion` ('mbff' | 'bff' | 'hff'), `use_cea`,
    `channel_shuffle`, `esa_convs` (a key of `ESA_CONVS`).
    """

    scale: int
    n_ffgs: int = 4
    n_mabs: int = 4
    n_feats: int = 32
    fusion: str = "mbff"
    use_cea: bool = True
    channel_shuffle: bool = True
    esa_convs: str = "3x3+dil3x3"
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if not isinstance(self.scale, int | np.integer) or self.scale < 1:
            raise ValueError(f"scale must be a positive integer, got {self.scale!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.esa_convs not in ESA_CONVS:
            raise ValueError(f"esa_convs must be one of {tuple(ESA_CONVS)}, got {self.esa_convs!r}")
        if self.fusion != "hff" and self.n_mabs < 2:
            raise ValueError(f"fusion {self.fusion!r} needs n_mabs >= 2, got {self.n_mabs}")
        if self.fusion == "bff" and self.n_mabs & (self.n_mabs - 1):
            raise ValueError(f"fusion 'bff' needs a power-of-two n_mabs, got {self.n_mabs}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"MAFFSRN expects NHWC RGB input [N, H, W, 3], got shape {x.shape}")
        if min(x.shape[1:3]) < MIN_INPUT_SIZE:
            raise ValueError(
                f"input {x.shape[1]}x{x.shape[2]} is smaller than {MIN_INPUT_SIZE}x"
                f"{MIN_INPUT_SIZE}, the least the ESA max pool accepts; pad it first "
                "(maffsrn_jax.inference pads automatically)"
            )
        dtype = jnp.dtype(self.dtype)
        x = x.astype(jnp.float32)
        h = Conv(self.n_feats, 3, weight_norm=True, dtype=dtype, name="head")(x)
        for i in range(self.n_ffgs):
            h = FFG(
                self.n_feats,
                self.n_mabs,
                fusion=self.fusion,
                channel_shuffle=self.channel_shuffle,
                use_cea=self.use_cea,
                esa_convs=ESA_CONVS[self.esa_convs],
                dtype=dtype,
                name=f"body_{i}",
            )(h)
        y = Tail(self.scale, dtype=dtype, name="tail")(h)
        return y.astype(jnp.float32) + ops.bicubic_upsample(x, self.scale)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (weight-norm gain and direction both count)."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
