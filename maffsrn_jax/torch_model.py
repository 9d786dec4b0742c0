"""A PyTorch MAFFSRN written from the facts sheet, with the official state_dict keys.

It computes what the authors' `MAFFSRN/src/model/maffsrn.py` computes and loads (and
produces) checkpoints in their layout, so users can run `flax_to_torch` output without the
authors' repository. The parity tests use it as the reference; conversion never needs it.

Requires torch (an optional dependency); nothing else in the package imports this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ESA_CONVS", "FUSIONS", "MAFFSRN", "WNConv2d"]

# Restated from the facts sheet rather than imported from the Flax model: as the tests'
# reference, this module must not inherit a mistake in the code it checks.
LEAKY_SLOPE = 0.05
FUSIONS = ("mbff", "bff", "hff")
# (kernel, dilation) of the parallel ESA convs conv1, conv2[, conv3].
ESA_CONVS: dict[str, tuple[tuple[int, int], ...]] = {
    "3x3+dil3x3": ((3, 1), (3, 2)),
    "3x3+3x3": ((3, 1), (3, 1)),
    "3x3x3": ((3, 1), (3, 1), (3, 1)),
    "3x3+5x5": ((3, 1), (5, 1)),
    "5x5+3x3": ((5, 1), (3, 1)),
}


class WNConv2d(nn.Module):
    """Conv2d under `torch.nn.utils.weight_norm` (dim 0): parameters weight_g, weight_v, bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
        self.padding = kernel_size // 2
        self.weight_v = nn.Parameter(conv.weight.detach().clone())
        norm = self.weight_v.detach().flatten(1).norm(dim=1)
        self.weight_g = nn.Parameter(norm.view(-1, 1, 1, 1))
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.weight_v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        weight = self.weight_g * self.weight_v / norm
        return F.conv2d(x, weight, self.bias, padding=self.padding)


class Scale(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([value], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _seq_conv(in_ch: int, out_ch: int, k: int, dilation: int = 1, groups: int = 1) -> nn.Sequential:
    # The official conv_block wraps each conv in an nn.Sequential, hence the '.0.' in its keys.
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, k, padding=pad, dilation=dilation, groups=groups))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MAB(nn.Module):
    def __init__(self, n_feats: int, use_cea: bool, esa_convs: tuple) -> None:
        super().__init__()
        r = n_feats // 4
        self.reduce_channels = nn.Conv2d(n_feats, r, 1)
        self.reduce_spatial_size = nn.Conv2d(r, r, 3, stride=2, padding=1)
        self.increase_channels = _seq_conv(r, n_feats, 1)
        self.n_esa = len(esa_convs)
        for i, (k, d) in enumerate(esa_convs):
            setattr(self, f"conv{i + 1}", _seq_conv(r, r, k, dilation=d))
        self.conv00 = _seq_conv(n_feats, n_feats, 3)
        self.conv01 = _seq_conv(n_feats, n_feats, 3)
        self.use_cea = use_cea
        if use_cea:
            self.bottom11 = _seq_conv(n_feats, n_feats, 1)
            self.bottom11_dw = _seq_conv(n_feats, n_feats, 5, groups=n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv00(F.leaky_relu(self.conv01(x), LEAKY_SLOPE))
        rc = self.reduce_channels(x)
        pooled = F.max_pool2d(self.reduce_spatial_size(rc), 7, stride=3)
        context = 0
        for i in range(self.n_esa):
            context = context + F.leaky_relu(getattr(self, f"conv{i + 1}")(pooled), LEAKY_SLOPE)
        up = F.interpolate(context, size=rc.shape[2:], mode="nearest") + rc
        out = torch.sigmoid(F.relu(self.increase_channels(up))) * x
        if self.use_cea:
            out = out * torch.sigmoid(self.bottom11_dw(self.bottom11(x)))
        return out


class FFG(nn.Module):
    def __init__(
        self, n_feats: int, n_mabs: int, fusion: str, shuffle: bool, use_cea: bool, esa: tuple
    ) -> None:
        super().__init__()
        self.n_mabs, self.fusion, self.shuffle = n_mabs, fusion, shuffle
        for j in range(n_mabs):
            setattr(self, f"b{j}", MAB(n_feats, use_cea, esa))
        if fusion == "hff":
            self.reduction = WNConv2d(n_feats * n_mabs, n_feats, 1)
        else:
            for k in range(1, n_mabs):
                setattr(self, f"reduction{k}", WNConv2d(n_feats * 2, n_feats, 1))
        self.res_scale = Scale(1.0)
        self.x_scale = Scale(1.0)

    def _fuse(self, parts: list[torch.Tensor], conv: nn.Module) -> torch.Tensor:
        y = torch.cat(parts, dim=1)
        return conv(channel_shuffle(y, len(parts)) if self.shuffle else y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, h = [], x
        for j in range(self.n_mabs):
            y = getattr(self, f"b{j}")(h)
            if 0 < j < self.n_mabs - 1:
                y = y + h
            feats.append(y)
            h = y
        if self.fusion == "hff":
            r = self._fuse(feats, self.reduction)
        elif self.fusion == "mbff":
            r = feats[0]
            for k, y in enumerate(feats[1:], start=1):
                r = self._fuse([r, y], getattr(self, f"reduction{k}"))
        else:  # bff: a binary tree, reductions numbered level by level
            level, k = feats, 1
            while len(level) > 1:
                nxt = []
                for i in range(0, len(level), 2):
                    nxt.append(self._fuse(level[i : i + 2], getattr(self, f"reduction{k}")))
                    k += 1
                level = nxt
            r = level[0]
        return self.res_scale(r) + self.x_scale(x)


class Tail(nn.Module):
    def __init__(self, scale: int, n_feats: int) -> None:
        super().__init__()
        out = 3 * scale * scale
        self.tail_k3 = WNConv2d(n_feats, out, 3)
        self.tail_k5 = WNConv2d(n_feats, out, 5)
        self.scale_k3 = Scale(0.5)
        self.scale_k5 = Scale(0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k3 = F.pixel_shuffle(self.scale_k3(self.tail_k3(x)), self.scale)
        k5 = F.pixel_shuffle(self.scale_k5(self.tail_k5(x)), self.scale)
        return k3 + k5


class MAFFSRN(nn.Module):
    """NCHW float RGB in [0, 1] -> NCHW at `scale`x. Same switches as the Flax model."""

    def __init__(
        self,
        scale: int,
        n_ffgs: int = 4,
        n_mabs: int = 4,
        n_feats: int = 32,
        fusion: str = "mbff",
        use_cea: bool = True,
        channel_shuffle: bool = True,
        esa_convs: str = "3x3+dil3x3",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS or esa_convs not in ESA_CONVS:
            raise ValueError(f"unknown fusion {fusion!r} or esa_convs {esa_convs!r}")
        self.scale = scale
        self.head = nn.Sequential(WNConv2d(3, n_feats, 3))
        self.body = nn.Sequential(
            *[
                FFG(n_feats, n_mabs, fusion, channel_shuffle, use_cea, ESA_CONVS[esa_convs])
                for _ in range(n_ffgs)
            ]
        )
        self.tail = Tail(scale, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tail(self.body(self.head(x)))
        skip = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return y + skip
