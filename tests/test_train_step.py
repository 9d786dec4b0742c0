"""The train step: AdamP parity with PyTorch at model level, learning, NaN skipping,
device-count independence. Multi-device runs use forced host devices in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from maffsrn_jax import train_lib
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO

OPT = dict(
    learning_rate=1e-3,
    lr_decay_steps=2,
    lr_decay_factor=0.5,
    adam_b1=0.9,
    adam_b2=0.999,
    adam_eps=1e-8,
    weight_decay=0.0,
)


def _batch(n: int = 4, p: int = 16, scale: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    # Smooth random images (a coarse random grid, upsampled) plus a little texture.
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    smooth = np.asarray(jax.image.resize(coarse, (n, p * scale, p * scale, 3), "cubic"))
    texture = rng.normal(0, 8, smooth.shape)
    hr = np.clip(smooth + texture, 0, 255).round().astype(np.uint8)
    # A smooth LR (box-downsampled HR) so the residual is learnable.
    lr = hr.reshape(n, p, scale, p, scale, 3).mean(axis=(2, 4)).round().astype(np.uint8)
    return {"lr": lr, "hr": hr}


def _step_fn(model, **overrides):
    cfg = ml_collections.ConfigDict({**OPT, **overrides})
    tx = train_lib.make_optimizer(cfg)
    step = train_lib.make_train_step(model, tx, train_lib.learning_rate_schedule(cfg), None)
    return tx, jax.jit(step)


def test_three_steps_match_pytorch_and_adamp():
    torch = pytest.importorskip("torch")
    adamp = pytest.importorskip("adamp")
    from maffsrn_jax import torch_model
    from maffsrn_jax.convert import flax_to_torch, torch_to_flax

    torch.manual_seed(0)
    ref = torch_model.MAFFSRN(2, n_ffgs=1)
    model, variables = torch_to_flax(ref.state_dict())
    start = flax_to_torch(model, variables)
    batch = _batch()
    lr = 2e-3
    opt = adamp.AdamP(ref.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    x = torch.from_numpy(batch["lr"].astype(np.float32).transpose(0, 3, 1, 2) / 255)
    y = torch.from_numpy(batch["hr"].astype(np.float32).transpose(0, 3, 1, 2) / 255)
    for _ in range(3):
        opt.zero_grad()
        torch.mean(torch.abs(ref(x) - y)).backward()
        opt.step()
    want = {k: v.detach().numpy() for k, v in ref.state_dict().items()}

    tx, step = _step_fn(model, learning_rate=lr, lr_decay_steps=100)
    state = train_lib.create_train_state(variables["params"], tx)
    for _ in range(3):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
    got = flax_to_torch(model, {"params": state.params})

    total_err = total_change = 0.0
    for k, w in want.items():
        change = w - start[k]
        err = float(np.linalg.norm(got[k] - w))
        total_err += err**2
        total_change += float(np.linalg.norm(change)) ** 2
        assert err <= 2e-3 * float(np.linalg.norm(change)) + 1e-7, k
    assert total_change > 0
    assert np.sqrt(total_err / total_change) <= 1e-4


@pytest.fixture(scope="module")
def small_step():
    """One jitted step of a 2-MAB model shared by the tests below, fed float32 batches only
    (a NaN needs float32, and a second input dtype would compile the step again)."""
    model = MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    tx, step = _step_fn(model, lr_decay_steps=1000)
    return train_lib.create_train_state(train_lib.init_params(model, jax.random.key(0)), tx), step


def _float_batch() -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in _batch().items()}


@pytest.mark.slow  # twelve optimizer steps
def test_loss_decreases_on_a_fixed_batch(small_step):
    state, step = small_step
    batch = _float_batch()
    losses = []
    for _ in range(12):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    assert int(state.step) == 12


def test_lr_schedule_halves_every_decay_steps():
    cfg = ml_collections.ConfigDict({**OPT, "learning_rate": 2e-4, "lr_decay_steps": 200_000})
    sched = train_lib.learning_rate_schedule(cfg)
    got = [float(sched(s)) for s in (0, 199_999, 200_000, 400_000, 999_999)]
    np.testing.assert_allclose(got, [2e-4, 2e-4, 1e-4, 5e-5, 1.25e-5], rtol=1e-6)


def test_non_finite_step_is_skipped_and_counted(small_step):
    state, step = small_step
    good = _float_batch()
    state, _ = step(state, good)
    before = jax.device_get(state)
    nan = _float_batch()
    nan["lr"][0, 0, 0, 0] = np.nan
    # Inputs of 1e20: the loss (~6e19) is finite, the gradient norm overflows float32.
    huge = {k: v * np.float32(1e20) for k, v in _float_batch().items()}
    for i, bad in enumerate((nan, nan, huge)):
        state, metrics = step(state, bad)
        assert not bool(metrics["finite"])
        assert float(metrics["grad_norm"]) == 0.0
        assert int(state.bad_run) == i + 1
    assert np.isfinite(float(metrics["loss"]))
    after = jax.device_get(state)
    same = jax.tree_util.tree_map(np.array_equal, before.params, after.params)
    assert all(jax.tree_util.tree_leaves(same))
    assert all(
        jax.tree_util.tree_leaves(
            jax.tree_util.tree_map(np.array_equal, before.opt_state, after.opt_state)
        )
    )
    assert int(after.skipped) == 3 and int(after.step) == 4
    state, metrics = step(state, good)
    assert bool(metrics["finite"]) and int(state.bad_run) == 0


def test_init_from_reinitialises_a_tail_of_another_scale():
    x2 = MAFFSRN(scale=2, n_ffgs=1, n_mabs=2)
    x4 = MAFFSRN(scale=4, n_ffgs=1, n_mabs=2)
    p2 = train_lib.init_params(x2, jax.random.key(1))
    p4 = train_lib.init_params(x4, jax.random.key(2))
    merged, reinit = train_lib.load_init_params(p4, p2)
    flat, src, fresh = (traverse_util.flatten_dict(t) for t in (merged, p2, p4))
    assert reinit and all(r.startswith("tail/") for r in reinit)
    for path, v in flat.items():
        ref = fresh if "/".join(path) in reinit else src
        np.testing.assert_array_equal(np.asarray(v), np.asarray(ref[path]))
    other = train_lib.init_params(
        MAFFSRN(scale=2, n_ffgs=1, n_mabs=2, n_feats=16), jax.random.key(0)
    )
    with pytest.raises(ValueError, match="mis-shaped"):
        train_lib.load_init_params(p2, other)


_DEVICES_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np, ml_collections
    from maffsrn_jax import train_lib
    from maffsrn_jax.models import MAFFSRN
    from tests.test_train_step import OPT, _batch

    def flat(tree):
        leaves = jax.tree_util.tree_leaves(tree)
        return np.concatenate([np.asarray(x).ravel() for x in leaves])

    # One MAB: the point is device-count independence, and each device count compiles.
    model = MAFFSRN(scale=2, n_ffgs=1, n_mabs=1, fusion="hff")
    cfg = ml_collections.ConfigDict(OPT)
    tx, sched = train_lib.make_optimizer(cfg), train_lib.learning_rate_schedule(cfg)
    params = train_lib.init_params(model, jax.random.key(0))
    out = {}
    for n in (1, 4):
        devices = jax.devices()[:n]
        step = jax.pmap(train_lib.make_train_step(model, tx, sched), axis_name="batch",
                        devices=devices)
        state = train_lib.replicate(train_lib.create_train_state(params, tx), devices)
        for k in range(3):
            state, _ = step(state, train_lib.shard(_batch(8, 16, seed=k), n))
        out[n] = flat(jax.tree_util.tree_map(lambda x: x[0], state.params))
    print(json.dumps({"devices": jax.device_count(),
                      "max_diff": float(np.abs(out[1] - out[4]).max()),
                      "moved": float(np.abs(out[1] - flat(params)).max())}))
    """
)


@pytest.mark.slow
def test_one_device_and_four_devices_give_the_same_weights():
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run(
        [sys.executable, "-c", _DEVICES_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["devices"] == 4
    assert res["moved"] > 1e-4  # the weights did change
    assert res["max_diff"] <= 2e-5, res
