"""Training state, learning-rate schedule and the jit/pmap train step (L1 + AdamP).

The step is a pure function `train_step(state, batch) -> (state, metrics)` built by
`make_train_step(model, tx)`; `p_train_step` wraps it in `jax.pmap` with the state donated
and gradients averaged over every device of every host.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maffsrn_jax import xla_options
from maffsrn_jax.models import MAFFSRN, MIN_INPUT_SIZE
from maffsrn_jax.optim import adamp

AXIS = "batch"

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the config: the data position is `step`,
    because the batch at step k is a pure function of (seed, k)."""

    step: jax.Array
    params: Any
    opt_state: Any
    skipped: jax.Array  # non-finite steps skipped so far
    bad_run: jax.Array  # consecutive non-finite steps ending at `step`


def model_from_config(cfg: ml_collections.ConfigDict) -> MAFFSRN:
    """MAFFSRN from the `model` sub-config (its fields are the constructor's)."""
    return MAFFSRN(**cfg.to_dict())


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Step decay: lr * factor^(step // lr_decay_steps) (the paper: 2e-4, x0.5 every 200 K)."""
    return optax.exponential_decay(
        init_value=config.learning_rate,
        transition_steps=config.lr_decay_steps,
        decay_rate=config.lr_decay_factor,
        staircase=True,
    )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return adamp(
        learning_rate_schedule(config),
        b1=config.adam_b1,
        b2=config.adam_b2,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def init_params(model: MAFFSRN, key: jax.Array) -> Any:
    """Parameters with PyTorch's initialisation (the same on every host and device count).

    Run eagerly: under jit, XLA compiles one threefry generator per parameter (most of a
    minute for MAFFSRN x2 on a small CPU); eagerly, the bucketed draws of
    `layers._torch_uniform` compile two. `lazy_init` skips the forward pass that `init` would
    also run op by op (the same values).
    """
    x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
    return model.lazy_init(key, x)["params"]


def create_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    # Separate zeros: one buffer in three fields could not be donated.
    zero = lambda: jnp.zeros((), jnp.int32)
    return TrainState(
        step=zero(), params=params, opt_state=tx.init(params), skipped=zero(), bad_run=zero()
    )


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]; batches travel as uint8 (4x less host->device)."""
    return images.astype(jnp.float32) / 255.0


def l1_loss(model: MAFFSRN, params: Any, batch: Batch) -> jax.Array:
    sr = model.apply({"params": params}, to_float(batch["lr"]))
    return jnp.mean(jnp.abs(sr - to_float(batch["hr"])))


def make_train_step(
    model: MAFFSRN,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    axis_name: str | None = AXIS,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds `train_step(state, batch) -> (state, metrics)`.

    Under pmap (`axis_name` set) the loss and gradients are averaged over all devices of all
    hosts, so the update equals the single-device update on the global batch. A step whose
    loss or gradients are not finite (or whose gradient norm overflows float32) leaves params
    and optimizer state untouched.
    """

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        loss, grads = jax.value_and_grad(functools.partial(l1_loss, model))(state.params, batch)
        if axis_name is not None:
            loss, grads = jax.lax.pmean((loss, grads), axis_name)
        # One sum of squares serves the guard and the logged norm (one reduction per leaf,
        # not two: each is a kernel to compile). A gradient norm that overflows float32
        # (> 1.8e19: a diverged run) is thus skipped like a NaN.
        sq_norm = sum(jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads))
        finite = jnp.isfinite(loss) & jnp.isfinite(sq_norm)

        def update(operands):
            grads, params, opt_state = operands
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A conditional, not a select per leaf: under pmap XLA:CPU copies the whole `finite`
        # computation (a sum over every leaf) into each select's kernel, which makes the
        # compile time quadratic in the number of parameter tensors. Not
        # `optax.apply_if_finite`: it selects per leaf too, ignores the loss and a norm that
        # overflows, and applies the update after `max_consecutive_errors` bad steps, where
        # this run stops and keeps its last good checkpoint.
        params, opt_state = jax.lax.cond(
            finite, update, lambda ops: ops[1:], (grads, state.params, state.opt_state)
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            bad_run=jnp.where(finite, 0, state.bad_run + 1),
        )
        metrics = {
            "loss": loss,
            "lr": schedule(state.step),
            "finite": finite,
            "grad_norm": jnp.where(finite, jnp.sqrt(sq_norm), 0.0),
        }
        return new_state, metrics

    return train_step


def make_p_train_step(
    model: MAFFSRN, tx: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pmapped step: state replicated and donated, batch [local_devices, B_dev, ...].

    Compiled with `xla_options.compiler_options()`, which `jax.pmap` does not take: the step
    is lowered and compiled ahead of time, once per distinct set of argument shapes. Across
    several processes an ahead-of-time pmap expects global shapes where callers hold local
    ones, so multi-host runs compile with XLA's defaults.
    """
    pmapped = jax.pmap(make_train_step(model, tx, schedule), axis_name=AXIS, donate_argnums=(0,))
    options = xla_options.compiler_options()
    if not options or jax.process_count() > 1:
        return pmapped
    compiled: dict[Any, Any] = {}

    def p_train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        leaves, treedef = jax.tree_util.tree_flatten((state, batch))
        avals = tuple((np.shape(x), np.dtype(getattr(x, "dtype", type(x)))) for x in leaves)
        key = (treedef, avals)
        if key not in compiled:
            compiled[key] = pmapped.lower(state, batch).compile(compiler_options=options)
        return compiled[key](state, batch)

    return p_train_step


def shard(batch: Mapping[str, np.ndarray], n_devices: int) -> dict[str, np.ndarray]:
    """[B_local, ...] -> [n_devices, B_local / n_devices, ...]."""
    return {
        k: v.reshape(n_devices, v.shape[0] // n_devices, *v.shape[1:]) for k, v in batch.items()
    }


def replicate(tree: Any, devices: list | None = None) -> Any:
    """One copy of `tree` per local device, laid out exactly as pmap lays out its outputs.

    (flax.jax_utils.replicate's layout differs from pmap's output layout, which would make
    the second train step compile the whole program again.)
    """
    devices = devices or jax.local_devices()
    stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * len(devices)), tree)
    return jax.pmap(lambda x: x, axis_name=AXIS, devices=devices)(stacked)


def unreplicate_to_host(tree: Any) -> Any:
    """This host's first replica of every leaf, as numpy (safe to keep after the buffers are
    donated). Local shards only: on several hosts, pmap outputs span every host's devices,
    and indexing them would be a collective that the other hosts are not running.
    """
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def load_init_params(params: Any, pretrained: Any) -> tuple[Any, list[str]]:
    """Copies `pretrained` into `params`; tail tensors of another shape (another scale) keep
    their fresh init, as the official loader does. Returns (params, re-initialised paths).
    Any other mismatch raises ValueError listing the offending tensors.
    """
    flat = flax.traverse_util.flatten_dict(params)
    src = flax.traverse_util.flatten_dict(pretrained)
    missing = sorted("/".join(p) for p in flat if p not in src)
    unexpected = sorted("/".join(p) for p in src if p not in flat)
    reinit, bad = [], []
    out = {}
    for path, value in flat.items():
        if path not in src:
            continue
        new = np.asarray(src[path])
        if new.shape != value.shape:
            if path[0] == "tail":
                reinit.append("/".join(path))
                out[path] = value
            else:
                bad.append(f"{'/'.join(path)} {list(new.shape)} != {list(value.shape)}")
            continue
        out[path] = jnp.asarray(new, value.dtype)
    problems = [
        f"{len(v)} {k} ({', '.join(v[:3])}{' ...' if len(v) > 3 else ''})"
        for k, v in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad))
        if v
    ]
    if problems:
        raise ValueError("; ".join(problems))
    return flax.traverse_util.unflatten_dict(out), reinit
