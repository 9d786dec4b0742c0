"""maffsrn_jax.optim.adamp against the reference adamp.AdamP (PyTorch), step for step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from adamp import AdamP

from maffsrn_jax.optim import ScaleByAdamPState, adamp

# A small parameter set shaped like the model's, in PyTorch layout: 3x3 conv (OIHW), its bias,
# a depthwise 5x5 conv, a weight-normed 3x3 conv (weight_v, weight_g [out, 1, 1, 1]), a 1x1
# conv and a scalar scale. The Flax twin holds 4-D tensors as HWIO (gains as (1, 1, 1, out)).
TORCH_SHAPES = {
    "conv_kernel": (8, 3, 3, 3),
    "conv_bias": (8,),
    "dw_kernel": (6, 1, 5, 5),
    "wn_v": (4, 8, 3, 3),
    "wn_g": (4, 1, 1, 1),
    "pw_kernel": (4, 6, 1, 1),
    "scale": (1,),
}
PROJECTED = [name for name, shape in TORCH_SHAPES.items() if len(shape) > 1]
STEPS = 5
RTOL, ATOL = 1e-5, 1e-7


def to_flax(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x  # OIHW -> HWIO


def to_torch(x: np.ndarray) -> np.ndarray:
    return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x  # HWIO -> OIHW


def init_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    params = {k: 0.2 * rng.standard_normal(s) for k, s in TORCH_SHAPES.items()}
    params["wn_g"] = np.linalg.norm(params["wn_v"].reshape(4, -1), axis=1).reshape(4, 1, 1, 1)
    params["scale"] = np.ones(1)
    return {k: v.astype(np.float32) for k, v in params.items()}


def make_grad(p: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """A gradient for torch-layout `p` that makes AdamP take a chosen branch.

    random: typically no projection (|cos| ~ 1/sqrt(row) is far above delta/sqrt(row)).
    parallel: cos = 1, never projected.
    orthogonal: each output-channel row orthogonal to p's row, so the channel view projects.
    layer_only: each row a multiple of p's row (channel |cos| = 1 fails) with the multiples
      weighted to cancel over the tensor (layer cos ~ 0), so only the layer view projects.
    """
    p64 = p.astype(np.float64)
    r = 0.1 * rng.standard_normal(p.shape)
    if mode == "random" or (p.ndim <= 1 and mode != "parallel"):
        g = r
    elif mode == "parallel":
        g = rng.uniform(0.5, 1.5) * p64
    elif mode == "orthogonal":
        rows, r_rows = p64.reshape(p.shape[0], -1), r.reshape(p.shape[0], -1)
        coef = np.sum(r_rows * rows, axis=1, keepdims=True) / np.sum(rows * rows, 1, keepdims=True)
        g = (r_rows - coef * rows).reshape(p.shape)
    elif mode == "layer_only":
        rows = p64.reshape(p.shape[0], -1)
        sq = np.sum(rows * rows, axis=1)
        c = rng.standard_normal(p.shape[0])
        c -= np.sum(c * sq) / np.sum(sq)
        g = (c[:, None] * rows).reshape(p.shape)
    else:
        raise ValueError(mode)
    return g.astype(np.float32)


def torch_branch(opt: AdamP, p: torch.Tensor, g: torch.Tensor) -> str | None:
    """The view adamp.AdamP projects `p` with for gradient `g` ('channel', 'layer' or None)."""
    group = opt.param_groups[0]
    for name, view in (("channel", opt._channel_view), ("layer", opt._layer_view)):
        cos = opt._cosine_similarity(g, p.data, group["eps"], view)
        if cos.max() < group["delta"] / math.sqrt(view(p.data).size(1)):
            return name
    return None


def run_pair(
    modes,
    *,
    torch_kwargs=None,
    jax_kwargs=None,
    schedule=None,
    clip=None,
    jit=True,
    seed=0,
    jax_layout=to_flax,
    from_jax=to_torch,
):
    """Runs adamp.AdamP and our adamp side by side from the same weights and gradients.

    modes: the gradient mode per step (a str for all steps; or a callable (step, name) -> mode).
    Returns the per-step branch log of the torch side and the max |difference| seen.
    Asserts every tensor (params and both moments) matches after every step.
    """
    torch_kwargs, jax_kwargs = dict(torch_kwargs or {}), dict(jax_kwargs or {})
    lr = torch_kwargs.pop("lr", 1e-2)
    params_np = init_params(seed)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params_np.items()}
    opt = AdamP(list(tparams.values()), lr=lr, **torch_kwargs)
    tx = adamp(schedule if schedule is not None else lr, **jax_kwargs)
    if clip is not None:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    params = {k: jnp.asarray(jax_layout(v)) for k, v in params_np.items()}
    state = tx.init(params)

    def step(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    rng = np.random.default_rng(seed + 1)
    branches, max_diff = [], 0.0
    for i in range(STEPS):
        mode_of = modes if callable(modes) else (lambda i, name, m=modes: m)
        grads_np = {
            k: make_grad(tparams[k].detach().numpy(), mode_of(i, k), rng) for k in TORCH_SHAPES
        }
        branches.append(
            {k: torch_branch(opt, tparams[k], torch.from_numpy(grads_np[k])) for k in PROJECTED}
        )
        for k, p in tparams.items():
            p.grad = torch.from_numpy(grads_np[k].copy())
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tparams.values()), clip)
        if schedule is not None:
            opt.param_groups[0]["lr"] = float(schedule(i))
        opt.step()

        grads = {k: jnp.asarray(jax_layout(v)) for k, v in grads_np.items()}
        params, state = step(grads, state, params)
        adam_state = state[-1] if clip is not None else state
        for k, p in tparams.items():
            ours = {
                "param": params[k],
                "exp_avg": adam_state.mu[k],
                "exp_avg_sq": adam_state.nu[k],
            }
            theirs = {"param": p.detach(), **opt.state[p]}
            for what, x in ours.items():
                want = theirs[what].numpy()
                got = from_jax(np.asarray(x))
                np.testing.assert_allclose(
                    got, want, rtol=RTOL, atol=ATOL, err_msg=f"step {i} {k} {what}"
                )
                max_diff = max(max_diff, float(np.max(np.abs(got - want))))
    return branches, max_diff


def branches_seen(branches) -> set:
    return {b for step in branches for b in step.values()}


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("random", None),  # Mostly unprojected, but a short row may pass by chance.
        ("parallel", {None}),
        ("orthogonal", {"channel"}),
        ("layer_only", {"layer"}),
    ],
)
def test_matches_torch_default_settings(mode, expected):
    branches, _ = run_pair(mode)
    # The gradient construction must really drive the reference into the intended branch,
    # otherwise the comparison would not cover it.
    if expected is not None:
        assert branches_seen(branches) == expected


def mixed(step: int, name: str) -> str:
    modes = ("random", "orthogonal", "parallel", "layer_only")
    return modes[(step + sorted(TORCH_SHAPES).index(name)) % len(modes)]


def test_mixed_branches_across_steps_and_tensors():
    branches, _ = run_pair(mixed)
    assert branches_seen(branches) == {None, "channel", "layer"}
    # Every projected tensor goes through more than one branch across the steps.
    for name in PROJECTED:
        assert len({step[name] for step in branches}) > 1


def test_matches_torch_weight_decay():
    # weight_decay with and without projection (the projected tensors use wd_ratio).
    branches, _ = run_pair(
        mixed, torch_kwargs={"weight_decay": 0.5}, jax_kwargs={"weight_decay": 0.5}
    )
    assert branches_seen(branches) == {None, "channel", "layer"}


def test_matches_torch_nesterov_and_other_hyperparameters():
    kw = {"betas": (0.8, 0.99), "eps": 1e-6, "delta": 0.2, "wd_ratio": 0.3, "nesterov": True}
    kw["weight_decay"] = 0.1
    jax_kw = dict(kw, b1=0.8, b2=0.99)
    del jax_kw["betas"]
    run_pair(mixed, torch_kwargs=kw, jax_kwargs=jax_kw)


@pytest.mark.parametrize(
    "schedule",
    [
        optax.exponential_decay(1e-2, transition_steps=1, decay_rate=0.7),
        optax.piecewise_constant_schedule(1e-2, {2: 0.5, 4: 0.5}),
    ],
)
def test_matches_torch_with_lr_schedule(schedule):
    run_pair(
        mixed,
        schedule=schedule,
        torch_kwargs={"weight_decay": 0.5},
        jax_kwargs={"weight_decay": 0.5},
    )


@pytest.mark.slow
def test_in_chain_with_clipping_and_without_jit():
    # Gradients of norm ~2 clipped to 0.5 on both sides; also checks the un-jitted path.
    run_pair(mixed, clip=0.5, jit=False)


def test_channel_axis_override_for_torch_layout():
    # The same tensors kept in PyTorch layout (OIHW, gains [out, 1, 1, 1]): channel axis 0.
    identity = lambda x: x
    run_pair(mixed, jax_kwargs={"channel_axis": 0}, jax_layout=identity, from_jax=identity)


def test_channel_axis_tree_projects_1d_gains_like_torch():
    # A layout with weight-norm gains stored as (out,): a per-leaf axis tree (here a callable
    # returning one) makes the 1-D gain a projection candidate, as weight_g is in PyTorch.
    def flat_gain(x):
        return x.reshape(-1) if x.shape == TORCH_SHAPES["wn_g"] else to_flax(x)

    def unflat_gain(x):
        return x.reshape(TORCH_SHAPES["wn_g"]) if x.shape == (4,) else to_torch(x)

    def axes(params):
        return {k: (0 if k == "wn_g" else -1) if k in PROJECTED else None for k in params}

    branches, _ = run_pair(
        mixed, jax_kwargs={"channel_axis": axes}, jax_layout=flat_gain, from_jax=unflat_gain
    )
    assert {step["wn_g"] for step in branches} >= {"channel", "layer"}


def test_without_projection_differs_from_torch():
    # Sensitivity check: the comparison catches a missing projection.
    no_projection = {k: None for k in TORCH_SHAPES}
    with pytest.raises(AssertionError):
        run_pair("orthogonal", jax_kwargs={"channel_axis": no_projection})
    with pytest.raises(AssertionError):
        run_pair("layer_only", jax_kwargs={"channel_axis": no_projection})


def test_pmap_and_state():
    params = {k: jnp.asarray(to_flax(v)) for k, v in init_params().items()}
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    tx = adamp(optax.constant_schedule(1e-3), weight_decay=0.1)
    state = tx.init(params)
    assert isinstance(state, ScaleByAdamPState) and int(state.count) == 0

    n = jax.local_device_count()
    replicate = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), tree)
    updates, new_state = jax.pmap(tx.update)(replicate(grads), replicate(state), replicate(params))
    want_updates, want_state = jax.jit(tx.update)(grads, state, params)
    np.testing.assert_array_equal(np.asarray(new_state.count), 1)
    got_params = optax.apply_updates(replicate(params), updates)
    want_params = optax.apply_updates(params, want_updates)
    for got, want in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(np.asarray(got)[0], np.asarray(want), rtol=1e-6, atol=1e-9)
    assert int(want_state.count) == 1


def test_inject_hyperparams():
    params = {k: jnp.asarray(to_flax(v)) for k, v in init_params().items()}
    grads = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
    plain = adamp(1e-3, weight_decay=0.1)
    injected = optax.inject_hyperparams(
        adamp, static_args=("b1", "b2", "nesterov", "channel_axis")
    )(learning_rate=1e-3, weight_decay=0.1)
    want, _ = jax.jit(plain.update)(grads, plain.init(params), params)
    got, state = jax.jit(injected.update)(grads, injected.init(params), params)
    np.testing.assert_allclose(float(state.hyperparams["learning_rate"]), 1e-3, rtol=1e-7)
    for g, w in zip(
        jax.tree.leaves(optax.apply_updates(params, got)),
        jax.tree.leaves(optax.apply_updates(params, want)),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-9)


def test_errors():
    params = {"k": jnp.ones((3, 3, 2, 4)), "b": jnp.ones(4)}
    tx = adamp(1e-3)
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="does not match"):
        adamp(1e-3, channel_axis={"k": -1}).init(params)
    with pytest.raises(ValueError, match="invalid for a parameter of shape"):
        adamp(1e-3, channel_axis={"k": 4, "b": None}).init(params)
