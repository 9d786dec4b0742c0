"""Resampling and channel-permutation primitives with PyTorch's exact semantics (NHWC).

Converted weights only reproduce the official outputs if these match `torch.nn.functional`
bit for bit in their index arithmetic; `jax.image.resize` does not (its bicubic uses
A = -0.5 and its nearest rounds half-pixel centres).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_CUBIC_A = -0.75  # PyTorch's cubic convolution constant (MATLAB and PIL use -0.5).


def _cubic_weights(t: float) -> np.ndarray:
    """Keys' cubic convolution weights for taps at offsets -1, 0, 1, 2 from floor(src)."""
    a = _CUBIC_A
    near = lambda d: ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
    far = lambda d: ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


@functools.cache
def _bicubic_phases(scale: int) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """Per output phase i: (floor offset, 4 tap weights).

    With align_corners=False the source of output pixel h*s + i is h + (i + 0.5)/s - 0.5,
    so for an integer scale every phase has fixed taps and weights.
    """
    phases = []
    for i in range(scale):
        src = (i + 0.5) / scale - 0.5
        floor = int(np.floor(src))
        phases.append((floor, tuple(float(w) for w in _cubic_weights(src - floor))))
    return tuple(phases)


def _bicubic_axis(x: jax.Array, scale: int, axis: int) -> jax.Array:
    n = x.shape[axis]
    # Taps outside the image are clamped to the border, i.e. edge padding.
    pad = [(0, 0)] * x.ndim
    pad[axis] = (2, 2)
    xp = jnp.pad(x, pad, mode="edge")
    outs = []
    for floor, weights in _bicubic_phases(scale):
        acc = None
        for m, w in enumerate(weights):
            start = floor + m - 1 + 2
            tap = jax.lax.slice_in_dim(xp, start, start + n, axis=axis) * w
            acc = tap if acc is None else acc + tap
        outs.append(acc)
    y = jnp.stack(outs, axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = n * scale
    return y.reshape(shape)


def bicubic_upsample(x: jax.Array, scale: int) -> jax.Array:
    """`F.interpolate(x, scale_factor=scale, mode='bicubic', align_corners=False)`.

    [N, H, W, C] -> [N, sH, sW, C]; no antialiasing and no output clamping.
    """
    return _bicubic_axis(_bicubic_axis(x, scale, 1), scale, 2)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel for PyTorch's legacy 'nearest' mode.

    src = floor(dst * (in / out)), evaluated in float32 as ATen does, clamped to in - 1.
    """
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:
        return dst >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _nearest_indices_traced(in_size, out_size) -> jax.Array:
    """`nearest_indices` as jnp arithmetic, for sizes that are symbolic under `jax.export`.

    The same float32 products as ATen (and as `nearest_indices`), so the same indices.
    """
    dst = jnp.arange(out_size, dtype=jnp.int32)
    scale = jnp.asarray(in_size, jnp.float32) / jnp.asarray(out_size, jnp.float32)
    src = jnp.floor(dst.astype(jnp.float32) * scale).astype(jnp.int32)
    return jnp.minimum(src, jnp.asarray(in_size, jnp.int32) - 1)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`F.interpolate(x, size=size, mode='nearest')`: [N, h, w, C] -> [N, H, W, C].

    Sizes may be symbolic (shape-polymorphic export); the indices are then computed in the
    graph instead of baked in as constants.
    """
    sizes = (x.shape[1], size[0], x.shape[2], size[1])
    if all(isinstance(d, int | np.integer) for d in sizes):
        rows = nearest_indices(x.shape[1], size[0])
        cols = nearest_indices(x.shape[2], size[1])
        return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)
    rows = _nearest_indices_traced(x.shape[1], size[0])
    cols = _nearest_indices_traced(x.shape[2], size[1])
    return jnp.take(jnp.take(x, rows, axis=1, mode="clip"), cols, axis=2, mode="clip")


def pixel_shuffle(x: jax.Array, scale: int) -> jax.Array:
    """`nn.PixelShuffle(scale)` in NHWC: channel c*s^2 + i*s + j -> pixel (h*s + i, w*s + j, c).

    [N, H, W, C*s^2] -> [N, sH, sW, C].
    """
    n, h, w, c = x.shape
    out_c = c // (scale * scale)
    y = x.reshape(n, h, w, out_c, scale, scale)
    y = y.transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, h * scale, w * scale, out_c)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """ShuffleNet channel shuffle: view (groups, C/groups) -> transpose -> flatten.

    Output channel k = input channel (k mod groups) * (C / groups) + k div groups.
    """
    *lead, c = x.shape
    y = x.reshape(*lead, groups, c // groups)
    return jnp.swapaxes(y, -1, -2).reshape(*lead, c)
