"""AdamP (Heo et al., ICLR 2021) as an optax transformation, step-for-step equal to `adamp.AdamP`.

AdamP is Adam plus a projection: for a scale-invariant weight (one followed by normalisation,
or a weight-norm direction) the radial part of the Adam step only inflates the weight norm, so
when the gradient is nearly orthogonal to the weight (per output channel, else over the whole
tensor) that radial part is removed and the decoupled weight decay is damped by `wd_ratio`.

Layout: PyTorch's AdamP projects every tensor with more than one dimension and groups its
"channel view" by dim 0 (the output channel of OIHW kernels and of `weight_g` [out, 1, 1, 1]).
Flax kernels here are HWIO and weight-norm gains are stored as (1, 1, 1, out), so by default a
leaf with `ndim > 1` is projected and its channel view groups by the LAST axis. The per-row
reductions are order-independent, so the numbers equal those of the OIHW twin.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ChannelAxis = int | Any | Callable[[Any], Any]


class ScaleByAdamPState(NamedTuple):
    """State of `adamp`: the number of updates done and the Adam moments (params' structure)."""

    count: jax.Array  # int32 scalar, 0 before the first update.
    mu: Any
    nu: Any


def _log(decay: Any) -> Any:
    # A Python float is taken in double precision: rounding 0.999 to float32 first would put
    # a 1.3e-5 relative error into 1 - b2 (and so into the first steps' bias correction).
    if isinstance(decay, numbers.Real):
        return math.log(decay) if decay > 0 else -math.inf
    return jnp.log(decay)


def _bias_correction(decay: Any, t: jax.Array) -> jax.Array:
    """1 - decay**t, accurate in float32 even for decay close to 1 (unlike 1 - decay**t)."""
    return -jnp.expm1(t * _log(decay))


def _project(
    p: jax.Array,
    g: jax.Array,
    perturb: jax.Array,
    axis: int | None,
    *,
    delta: Any,
    eps: Any,
    wd_ratio: Any,
) -> tuple[jax.Array, Any]:
    """AdamP's projection of one leaf; returns (perturb, weight-decay multiplier).

    Views, tried in order: channel (one row per index of `axis`, each row = all other elements),
    then layer (the whole tensor as one row). The first view whose max |cos(g_row, p_row)| is
    below delta / sqrt(row length) removes from `perturb` its component along each p_row.

    Everything comes from four per-row sums (g.g, p.p, g.p, p.perturb), and the layer view's
    sums are those of the rows. Following `adamp.AdamP` literally (normalise the rows, then
    dot them, per view) takes about twice the passes over the tensor, each one more kernel
    for XLA to compile: ~1,000 more for MAFFSRN's 343 leaves. Both views are evaluated and
    selected with jnp.where so the step stays traceable.
    """
    if axis is None or p.size == 0:
        return perturb, 1.0
    rows = tuple(i for i in range(p.ndim) if i != axis)
    sums = [jnp.sum(a * b, axis=rows, keepdims=True) for a, b in ((g, g), (p, p), (g, p))]
    p_perturb = jnp.sum(p * perturb, axis=rows, keepdims=True)

    def view(gg, pp, gp, pq, row_len):
        # torch.nn.functional.cosine_similarity (torch >= 1.12) clamps each norm below at eps;
        # the projection divides by (norm + eps)^2 (p_n = p / (|p| + eps) used twice).
        cosine = jnp.abs(gp) / (jnp.maximum(jnp.sqrt(gg), eps) * jnp.maximum(jnp.sqrt(pp), eps))
        hit = jnp.max(cosine) < delta / math.sqrt(row_len)
        return hit, pq / jnp.square(jnp.sqrt(pp) + eps)

    hit_channel, coef_channel = view(*sums, p_perturb, p.size // p.shape[axis])
    hit_layer, coef_layer = view(*(jnp.sum(s) for s in (*sums, p_perturb)), p.size)
    coef = jnp.where(hit_channel, coef_channel, jnp.where(hit_layer, coef_layer, 0.0))
    wd = jnp.where(hit_channel | hit_layer, wd_ratio, 1.0)
    return perturb - p * coef, wd


def _resolve_axes(channel_axis: ChannelAxis, params: Any) -> list[int | None]:
    """Per-leaf channel axis (normalised to >= 0) or None (leaf not projected), in leaf order."""
    leaves, treedef = jax.tree.flatten(params)
    if isinstance(channel_axis, numbers.Integral):
        axes = [int(channel_axis) if jnp.ndim(leaf) > 1 else None for leaf in leaves]
    else:
        tree = channel_axis(params) if callable(channel_axis) else channel_axis
        try:
            axes = treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"adamp: channel_axis tree does not match the params structure: {e}"
            ) from e
    resolved = []
    for leaf, axis in zip(leaves, axes, strict=True):
        if axis is None:
            resolved.append(None)
            continue
        ndim = jnp.ndim(leaf)
        if not isinstance(axis, numbers.Integral) or not -ndim <= axis < ndim:
            raise ValueError(
                f"adamp: channel axis {axis!r} is invalid for a parameter of shape "
                f"{jnp.shape(leaf)}"
            )
        resolved.append(int(axis) % ndim)
    return resolved


def adamp(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
    *,
    channel_axis: ChannelAxis = -1,
) -> optax.GradientTransformation:
    """AdamP, equal step for step to `adamp.AdamP` (adamp 0.3.0) with the same hyperparameters.

    The returned updates are new_params - params, so `optax.apply_updates(params, updates)`
    gives AdamP's new parameters (weight decay included). `update` requires `params`.

    One transformation rather than a chain of optax's (`scale_by_adam`, a projection,
    `add_decayed_weights`, `scale_by_learning_rate`): the decay multiplier depends on whether
    the projection fired, and the projection needs the raw gradient beside the Adam
    direction, which a chain's single `updates` tree cannot carry from stage to stage. The
    state follows `optax.ScaleByAdamState`'s names (`count`, `mu`, `nu`).

    Args:
      learning_rate: a float, or an optax schedule evaluated at the update count (0 for the
        first update, like `optax.adam`); the bias corrections use t = count + 1.
      b1, b2: Adam's decay rates of the first and second moments.
      eps: added to sqrt(second moment) and to the row norms in the projection, and the lower
        clamp of the norms in the cosine similarity (all as in `adamp.AdamP`).
      weight_decay: decoupled weight decay: p *= 1 - lr * weight_decay * (wd_ratio if the leaf
        was projected else 1), before the Adam step.
      delta: a view projects when max over its rows |cos(grad_row, param_row)| is below
        delta / sqrt(row length).
      wd_ratio: weight-decay multiplier for projected leaves.
      nesterov: use the Nesterov form of the first moment, (b1 * mu + (1 - b1) * grad).
      channel_axis: which leaves are projected and along which axis their channel view is
        grouped. An int (default -1, the output channel of HWIO kernels and of (1, 1, 1, out)
        weight-norm gains): every leaf with ndim > 1 is projected with that channel axis, leaves
        with ndim <= 1 are not (PyTorch's rule, for tensors in our Flax layout). Or a pytree with
        the params' structure (or a callable params -> such a pytree) whose leaves are an int
        channel axis or None (not projected); explicit axes apply whatever the leaf's ndim.

    Returns:
      An `optax.GradientTransformation` with state `ScaleByAdamPState`. It works under jit and
      pmap (purely per device) and in `optax.chain`. With `optax.inject_hyperparams`, pass
      `static_args=("b1", "b2", "nesterov", "channel_axis")`: the last two steer tracing, and
      float32 b1, b2 would cost the bias corrections ~1e-5 relative accuracy.
    """

    def init_fn(params: Any) -> ScaleByAdamPState:
        _resolve_axes(channel_axis, params)  # Fail on a bad channel_axis before any step.
        return ScaleByAdamPState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update_fn(
        updates: Any, state: ScaleByAdamPState, params: Any = None
    ) -> tuple[Any, ScaleByAdamPState]:
        if params is None:
            raise ValueError(
                "adamp: update needs params (AdamP's projection and weight decay use them)"
            )
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        bc1 = _bias_correction(b1, t)
        sqrt_bc2 = jnp.sqrt(_bias_correction(b2, t))
        step_size = lr / bc1

        p_leaves, treedef = jax.tree.flatten(params)
        g_leaves = treedef.flatten_up_to(updates)
        m_leaves = treedef.flatten_up_to(state.mu)
        v_leaves = treedef.flatten_up_to(state.nu)
        axes = _resolve_axes(channel_axis, params)

        new_updates, new_mu, new_nu = [], [], []
        for p, g, m, v, axis in zip(p_leaves, g_leaves, m_leaves, v_leaves, axes, strict=True):
            m = (b1 * m + (1 - b1) * g).astype(m.dtype)
            v = (b2 * v + (1 - b2) * g * g).astype(v.dtype)
            denom = jnp.sqrt(v) / sqrt_bc2 + eps
            if nesterov:
                perturb = (b1 * m + (1 - b1) * g) / denom
            else:
                perturb = m / denom
            perturb, wd = _project(p, g, perturb, axis, delta=delta, eps=eps, wd_ratio=wd_ratio)
            # Form the new parameter as PyTorch does and return the difference: p + (new - p)
            # then gives `new` bit for bit whenever new and p are within a factor 2 (Sterbenz).
            new_p = p * (1 - lr * weight_decay * wd) - step_size * perturb
            new_updates.append((new_p - p).astype(p.dtype))
            new_mu.append(m)
            new_nu.append(v)

        unflatten = treedef.unflatten
        return unflatten(new_updates), ScaleByAdamPState(
            count=count, mu=unflatten(new_mu), nu=unflatten(new_nu)
        )

    return optax.GradientTransformation(init_fn, update_fn)
