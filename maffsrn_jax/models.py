"""MAFFSRN in Flax: multi-attention blocks (MAB) grouped by feature-fusion groups (FFG).

Muqeet et al., "Ultra Lightweight Image Super-Resolution with Multi-Attention Layers"
(AIM 2020). Where the paper and the authors' PyTorch code disagree, this follows the code,
because that is what trained checkpoints expect (`docs/design.md` lists the differences).

Layout: images are NHWC, convolution kernels HWIO. Module and parameter names mirror the
official state_dict (`head`, `body_{i}.b{j}.conv00`, `tail.tail_k3`, ...) so that conversion
is a renaming, not a guess.

    x -> head (WN 3x3) -> FFG x n_ffgs -> tail (PS(0.5 WN3x3) + PS(0.5 WN5x5)) -> + bicubic(x)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maffsrn_jax import ops, portable_ops
from maffsrn_jax.layers import Conv, Scale

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
    portable: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, r = self.n_feats, self.n_feats // self.reduction
        conv = lambda *a, **k: Conv(*a, dtype=self.dtype, portable=self.portable, **k)

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
    portable: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feats, h = [], x
        for j in range(self.n_mabs):
            y = MAB(
                self.n_feats,
                use_cea=self.use_cea,
                esa_convs=self.esa_convs,
                dtype=self.dtype,
                portable=self.portable,
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
            conv = Conv(self.n_feats, 1, weight_norm=True, dtype=self.dtype,
                        portable=self.portable, name=name)
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
    portable: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.n_colors * self.scale**2
        conv = lambda *a, **k: Conv(*a, weight_norm=True, dtype=self.dtype,
                                    portable=self.portable, **k)
        k3 = conv(out, 3, name="tail_k3")(x)
        k5 = conv(out, 5, name="tail_k5")(x)
        y = Scale(0.5, name="scale_k3")(k3) + Scale(0.5, name="scale_k5")(k5)
        shuffle = portable_ops.pixel_shuffle if self.portable else ops.pixel_shuffle
        return shuffle(y, self.scale)


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
    # The same function from plain ops with symbolic-size support (maffsrn_jax.export).
    portable: bool = False

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
        # One comparison per side: symbolic sizes order against a constant, not each other.
        if x.shape[1] < MIN_INPUT_SIZE or x.shape[2] < MIN_INPUT_SIZE:
            raise ValueError(
                f"input {x.shape[1]}x{x.shape[2]} is smaller than {MIN_INPUT_SIZE}x"
                f"{MIN_INPUT_SIZE}, the least the ESA max pool accepts; pad it first "
                "(maffsrn_jax.inference pads automatically)"
            )
        dtype = jnp.dtype(self.dtype)
        x = x.astype(jnp.float32)
        h = Conv(self.n_feats, 3, weight_norm=True, dtype=dtype, portable=self.portable,
                 name="head")(x)
        for i in range(self.n_ffgs):
            h = FFG(
                self.n_feats,
                self.n_mabs,
                fusion=self.fusion,
                channel_shuffle=self.channel_shuffle,
                use_cea=self.use_cea,
                esa_convs=ESA_CONVS[self.esa_convs],
                dtype=dtype,
                portable=self.portable,
                name=f"body_{i}",
            )(h)
        y = Tail(self.scale, dtype=dtype, portable=self.portable, name="tail")(h)
        bicubic = portable_ops.bicubic_upsample if self.portable else ops.bicubic_upsample
        return y.astype(jnp.float32) + bicubic(x, self.scale)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (weight-norm gain and direction both count)."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
