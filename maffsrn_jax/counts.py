"""Operation counts of MAFFSRN, read off its layers: the paper's and the challenges' numbers.

Every count comes from one walk over the `Conv` layers a forward pass calls (`conv_calls`),
traced abstractly: nothing is computed or compiled, so a 720p count takes a second.

  conv_macs         multiply-adds of the convolutions: out_pixels * k * k * C_in/groups * C_out
                    (the paper's and the official code's convention; x4 on 256x256: 27.05 G)
  challenge_counts  the efficient-SR challenges' counter (AIM 2020, NTIRE 2022-2023: KAIR's
                    `utils_modelsummary`): `challenge_flops` = conv multiply-adds (bias not
                    counted) + one per output element of each ReLU-family activation module;
                    `activations` = elements of all conv outputs; `num_convs` = conv calls
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from maffsrn_jax.layers import Conv
from maffsrn_jax.models import MAB, MIN_INPUT_SIZE, count_params

__all__ = [
    "CHALLENGE_INPUT_SHAPE",
    "OFFICIAL_ACTIVATION_AFTER",
    "ConvCall",
    "challenge_counts",
    "conv_calls",
    "conv_macs",
    "param_count",
]

# The challenges count on one 256x256 LR image (KAIR: `get_model_flops(model, (3, 256, 256))`).
CHALLENGE_INPUT_SHAPE = (1, 256, 256, 3)

# The MAB convolutions that the official code builds as `conv_block(..., act_type=...)`: an
# nn.Sequential of the Conv2d and an activation *module*, which the challenges' counter hooks
# (one FLOP per output element). Our model applies the same activations as functions, so
# the counter finds them by the conv's name, which mirrors the official state_dict. The
# sigmoids, the max pool, the nearest and bicubic resampling and the pixel shuffle are
# functional calls (or modules the counter ignores) in the official code: never counted.
OFFICIAL_ACTIVATION_AFTER = {
    "conv01": "LeakyReLU",
    "conv1": "LeakyReLU",  # the ESA branches (conv3 exists only in the '3x3x3' ablation)
    "conv2": "LeakyReLU",
    "conv3": "LeakyReLU",
    "increase_channels": "ReLU",  # conv_block's default act_type='relu'
}


class ConvCall(NamedTuple):
    """One call of a `Conv` layer in a forward pass."""

    path: tuple[str, ...]  # module names from the model down, e.g. ('body_0', 'b1', 'conv01')
    kernel_size: int
    in_channels: int
    out_channels: int
    groups: int
    output_shape: tuple[int, ...]  # NHWC
    activation: str | None  # the activation module after it in the official code

    @property
    def output_elements(self) -> int:
        return math.prod(self.output_shape)

    @property
    def macs(self) -> int:
        """out_pixels * k * k * (C_in / groups) * C_out (a 1x1 written as a matmul included)."""
        taps = self.kernel_size**2 * (self.in_channels // self.groups)
        return math.prod(self.output_shape[:-1]) * taps * self.out_channels


def conv_calls(model: nn.Module, input_shape: Sequence[int]) -> list[ConvCall]:
    """Every `Conv` call of one forward pass of an NHWC `input_shape`, in call order.

    The layers are intercepted while shapes are traced abstractly (`jax.eval_shape` of
    `model.init`), so whatever kernel a layer runs on (1x1s as matmuls, the depthwise 5x5
    as shifted multiply-adds), it is recorded as the convolution it computes.
    """
    calls: list[ConvCall] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        conv = context.module
        if isinstance(conv, Conv) and context.method_name == "__call__":
            x = args[0]
            parts = x if isinstance(x, list | tuple) else [x]
            activation = None
            if isinstance(conv.parent, MAB):
                activation = OFFICIAL_ACTIVATION_AFTER.get(conv.name)
            calls.append(
                ConvCall(
                    path=tuple(conv.path),
                    kernel_size=conv.kernel_size,
                    in_channels=sum(p.shape[-1] for p in parts),
                    out_channels=conv.features,
                    groups=conv.groups,
                    output_shape=tuple(out.shape),
                    activation=activation,
                )
            )
        return out

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), x)
    return calls


def conv_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of every `Conv` layer in one forward pass of an NHWC `input_shape`.

    Each Conv call adds out_pixels * k * k * (C_in / groups) * C_out. Pooling, resampling,
    activations and the bicubic skip are not convolutions and are not counted; this is the
    convention of the published MAFFSRN numbers (x4 on 256x256: 27.05 G).
    """
    return sum(call.macs for call in conv_calls(model, input_shape))


def challenge_counts(
    model: nn.Module, input_shape: Sequence[int] = CHALLENGE_INPUT_SHAPE
) -> dict[str, int]:
    """{'challenge_flops', 'activations', 'num_convs'} as the efficient-SR challenges count.

    KAIR's `utils_modelsummary.get_model_flops` / `get_model_activation`, as AIM 2020 and
    NTIRE 2022-2023 call them on a 1x3x256x256 input: forward hooks on modules only. A
    Conv2d adds k_h * k_w * C_in * C_out / groups per output pixel (its bias is not
    counted); a ReLU, LeakyReLU, PReLU, ELU or ReLU6 module adds one per output element;
    nothing else counts. "#Activations" is the number of elements of all conv outputs and
    "#Conv" the number of conv calls. MAFFSRN x4 on 256x256: 27,048,593,408 conv
    multiply-adds + 67,539,200 activation outputs = 27.116 G.
    """
    calls = conv_calls(model, input_shape)
    relu_outputs = sum(c.output_elements for c in calls if c.activation is not None)
    return {
        "challenge_flops": sum(c.macs for c in calls) + relu_outputs,
        "activations": sum(c.output_elements for c in calls),
        "num_convs": len(calls),
    }


def param_count(model: nn.Module) -> int:
    """Number of parameter scalars of `model`, from its abstract initialisation."""
    x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
    return count_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
