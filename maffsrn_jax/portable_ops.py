"""The model's reshaping and resampling ops in a form every exporter and runtime accepts.

`MAFFSRN(..., portable=True)` uses these instead of the fast forms in `ops.py`: they compute
the same values but keep every tensor at rank <= 4 (LiteRT's GPU delegate rejects higher
ranks) and trace with symbolic batch, height and width (`jax.export`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maffsrn_jax import ops


def depth_to_space(x: jax.Array, scale: int) -> jax.Array:
    """TF's `depth_to_space` (DCR order) in NHWC with tensors of rank <= 4.

    Channel (i * s + j) * C + c of pixel (h, w) -> pixel (h * s + i, w * s + j), channel c.
    [N, H, W, s*s*C] -> [N, sH, sW, C].
    """
    n, h, w, c = x.shape
    out_c = c // (scale * scale)
    y = x.reshape(n * h, w, scale, scale * out_c)  # (nh, w, i, (j, c))
    y = y.transpose(0, 2, 1, 3)  # (nh, i, w, (j, c))
    return y.reshape(n, h * scale, w * scale, out_c)


def pixel_shuffle(x: jax.Array, scale: int) -> jax.Array:
    """`ops.pixel_shuffle` (PyTorch's CRD channel order) with tensors of rank <= 4."""
    n, h, w, c = x.shape
    out_c = c // (scale * scale)
    # Per pixel, channels (c, i, j) -> (i, j, c): PyTorch's order to depth_to_space's.
    y = x.reshape(n * h * w, out_c, scale, scale).transpose(0, 2, 3, 1)
    return depth_to_space(y.reshape(n, h, w, c), scale)


@functools.cache
def _bicubic_kernel(scale: int, channels: int) -> np.ndarray:
    """[5, 5, 1, C*s*s] depthwise kernel whose output channel c*s*s + i*s + j is output phase
    (i, j) of input channel c (PyTorch's pixel-shuffle order), weighted by the outer product
    of the two 1-D phase weights.

    Its window on the edge-padded (2 each side) input covers offsets -2..2, which holds every
    phase's 4 taps (floor offset -1 or 0, taps floor - 1 .. floor + 2).
    """
    phases = ops._bicubic_phases(scale)
    kernel = np.zeros((5, 5, 1, channels * scale * scale), np.float64)
    for i, (fi, wi) in enumerate(phases):
        for j, (fj, wj) in enumerate(phases):
            taps = np.outer(wi, wj)  # [4, 4]
            for c in range(channels):
                kernel[fi + 1 : fi + 5, fj + 1 : fj + 5, 0, (c * scale + i) * scale + j] = taps
    return kernel.astype(np.float32)


def _edge_pad(x: jax.Array, n: int, axis: int) -> jax.Array:
    """Replicates the first and last row (axis=1) or column (axis=2) n times. Written as a
    concatenation because jnp.pad's edge mode broadcasts through a rank-5 tensor."""
    first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
    last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
    return jnp.concatenate([first] * n + [x] + [last] * n, axis=axis)


def bicubic_upsample(x: jax.Array, scale: int) -> jax.Array:
    """`ops.bicubic_upsample` as one depthwise 5x5 convolution and a pixel shuffle.

    Taps outside the image are clamped to the border, hence the edge padding.
    """
    c = x.shape[-1]
    xp = _edge_pad(_edge_pad(x, 2, axis=1), 2, axis=2)
    y = jax.lax.conv_general_dilated(
        xp, jnp.asarray(_bicubic_kernel(scale, c)), window_strides=(1, 1), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )
    return pixel_shuffle(y, scale)
