"""The Flax MAFFSRN against the PyTorch reference (maffsrn_jax.torch_model), and each
PyTorch-exact primitive against torch's own op.

Parity runs use weights drawn in PyTorch with the lambdas (res_scale, x_scale, scale_k3/k5)
and the weight-norm gains moved off their init values, so a port that ignored a lambda or
mixed up gain and direction would show. Conversion itself is tested in test_convert.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maffsrn_jax import convert, layers, ops, torch_model
from maffsrn_jax.models import ESA_CONVS, MAFFSRN, MIN_INPUT_SIZE, Conv, count_params

from .conftest import flax_forward, torch_forward, torch_reference

TOL = 1e-5  # max abs, float32 on CPU
DEFAULT_ESA = "3x3+dil3x3"
# The tensors here are tiny: torch's intra-op thread pool only spins on a shared machine.
torch.set_num_threads(1)


def to_flax(net: torch_model.MAFFSRN, **arch) -> tuple[MAFFSRN, dict]:
    state_dict = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    # Fusion order, channel shuffle and dilation leave no trace in the keys: say them.
    return convert.torch_to_flax(state_dict, **arch)


def shapes_of(tree) -> dict:
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


# --- forward parity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, n_ffgs, size, batch",
    [
        (2, 1, (37, 50), 1),
        (3, 1, (37, 50), 1),
        (4, 1, (37, 50), 1),
        (3, 1, (13, 13), 2),  # the smallest input the ESA pool accepts
        (4, 4, (37, 50), 1),  # MAFFSRN proper
        (2, 4, (13, 29), 1),
    ],
)
def test_forward_matches_torch_reference(scale, n_ffgs, size, batch):
    net = torch_reference(scale, n_ffgs, seed=scale + 10 * n_ffgs)
    model, variables = to_flax(net)
    x = random_images((batch, *size, 3), seed=scale)
    y = flax_forward(model, variables, x)
    assert y.shape == (batch, size[0] * scale, size[1] * scale, 3)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, torch_forward(net, x), rtol=0, atol=TOL)


ABLATIONS = [
    {"fusion": "bff"},
    {"fusion": "hff"},
    {"fusion": "hff", "use_cea": False},
    {"use_cea": False},
    {"channel_shuffle": False},
    *({"esa_convs": k} for k in ESA_CONVS if k != DEFAULT_ESA),
]


def _ids(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("arch", ABLATIONS, ids=_ids)
def test_ablation_matches_torch_reference(arch):
    net = torch_reference(2, seed=3, **arch)
    model, variables = to_flax(net, **arch)
    for key, value in arch.items():
        assert getattr(model, key) == value
    # 37x50 leaves a 5x7 map after the ESA pool, wide enough for the dilation to matter.
    x = random_images((1, 37, 50, 3), seed=5)
    y = flax_forward(model, variables, x)
    np.testing.assert_allclose(y, torch_forward(net, x), rtol=0, atol=TOL)

    # Variants with the default's parameter shapes differ only in wiring: check that the
    # switch is not silently ignored by running the same weights through the default model.
    default = MAFFSRN(2, n_ffgs=1)
    default_shapes = jax.eval_shape(default.init, jax.random.key(0), jnp.zeros((1, 13, 13, 3)))
    if shapes_of(default_shapes) == shapes_of(variables):
        # Ignored, the outputs would be identical; wired differently, they part by more than
        # the float noise that parity allows (the dilation's effect is ~1e-4 at this size).
        assert np.abs(flax_forward(default, variables, x) - y).max() > TOL


# --- primitives against torch's own ops -----------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_matches_torch_interpolate(scale):
    rng = np.random.default_rng(scale)
    # Normal values (not just [0, 1]) so that an output clamp would show.
    sizes = [(1, 9), (7, 1), (2, 3), (13, 17)]
    xs = [rng.normal(size=(2, h, w, 3)).astype(np.float32) for h, w in sizes]
    # One jit for all sizes: a compile per shape would cost more than the check.
    ys = jax.jit(lambda xs: [ops.bicubic_upsample(x, scale) for x in xs])(xs)
    for x, y in zip(xs, ys, strict=True):
        want = F.interpolate(nchw(x), scale_factor=scale, mode="bicubic", align_corners=False)
        assert y.shape == (2, x.shape[1] * scale, x.shape[2] * scale, 3)
        got = np.asarray(y)
        np.testing.assert_allclose(got, nhwc(want), rtol=0, atol=TOL, err_msg=str(x.shape))


def _mab_sizes(n: int) -> tuple[int, int]:
    """(pooled, full) sizes along one axis inside a MAB fed n pixels: the nearest resize pair."""
    reduced = (n - 1) // 2 + 1  # 3x3 conv, stride 2, padding 1
    return (reduced - 7) // 3 + 1, n  # 7x7 max pool, stride 3


def test_nearest_indices_match_torch_legacy_nearest():
    pairs = {_mab_sizes(n) for n in range(MIN_INPUT_SIZE, 1100)}
    pairs |= {(i, o) for i in range(1, 14) for o in range(1, 50)}  # up and down
    for in_size, out_size in sorted(pairs):
        src = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
        want = F.interpolate(src, size=(out_size, 1), mode="nearest").flatten().long().numpy()
        got = ops.nearest_indices(in_size, out_size)
        np.testing.assert_array_equal(got, want, err_msg=f"{in_size} -> {out_size}")


@pytest.mark.parametrize(
    "in_hw, out_hw", [((3, 5), (13, 29)), ((4, 2), (37, 50)), ((7, 7), (5, 3))]
)
def test_nearest_resize_matches_torch(in_hw, out_hw):
    x = np.random.default_rng(0).random((2, *in_hw, 4), dtype=np.float32)
    want = F.interpolate(nchw(x), size=out_hw, mode="nearest")
    got = np.asarray(ops.nearest_resize(jnp.asarray(x), out_hw))
    np.testing.assert_array_equal(got, nhwc(want))


@pytest.mark.parametrize("scale, colors", [(2, 3), (3, 3), (4, 3), (3, 2)])
def test_pixel_shuffle_matches_torch(scale, colors):
    x = np.random.default_rng(scale).random((2, 5, 7, colors * scale**2), dtype=np.float32)
    want = torch.nn.PixelShuffle(scale)(nchw(x))
    got = np.asarray(ops.pixel_shuffle(jnp.asarray(x), scale))
    np.testing.assert_array_equal(got, nhwc(want))


@pytest.mark.parametrize("groups, channels", [(2, 64), (4, 128), (3, 12)])
def test_channel_shuffle_matches_view_transpose(groups, channels):
    x = np.random.default_rng(groups).random((2, 3, 4, channels), dtype=np.float32)
    t = nchw(x)
    n, c, h, w = t.shape
    want = t.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    got = np.asarray(ops.channel_shuffle(jnp.asarray(x), groups))
    np.testing.assert_array_equal(got, nhwc(want))
    # The reference model's shuffle is the same permutation.
    np.testing.assert_array_equal(got, nhwc(torch_model.channel_shuffle(t, groups)))


def test_channel_shuffle_interleaves_halves():
    # Facts sheet: output channel k = input channel (k mod 2) * 32 + k div 2.
    x = jnp.arange(64, dtype=jnp.float32).reshape(1, 1, 1, 64)
    got = np.asarray(ops.channel_shuffle(x, 2)).ravel()
    np.testing.assert_array_equal(got, [(k % 2) * 32 + k // 2 for k in range(64)])


def _torch_weight_norm_conv(cin: int, cout: int, k: int, seed: int) -> torch.nn.Conv2d:
    """nn.Conv2d under torch's own weight norm (dim 0), gain moved off ||v||."""
    torch.manual_seed(seed)
    conv = torch.nn.utils.parametrizations.weight_norm(
        torch.nn.Conv2d(cin, cout, k, padding=k // 2), dim=0
    )
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(torch.rand(cout, 1, 1, 1) + 0.5)
    return conv


@pytest.mark.parametrize("cin, cout, k", [(3, 32, 3), (64, 32, 1), (32, 27, 5)])
def test_weight_norm_matches_torch(cin, cout, k):
    conv = _torch_weight_norm_conv(cin, cout, k, seed=k)
    g = conv.parametrizations.weight.original0.detach().numpy()
    v = conv.parametrizations.weight.original1.detach().numpy()
    b = conv.bias.detach().numpy()
    params = {"kernel": v.transpose(2, 3, 1, 0), "gain": g.reshape(1, 1, 1, -1), "bias": b}
    x = np.random.default_rng(k).random((2, 9, 11, cin), dtype=np.float32)
    got = Conv(cout, k, weight_norm=True).apply({"params": params}, jnp.asarray(x))
    want = nhwc(conv(nchw(x)))
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOL)

    # The reference model's WNConv2d must be torch's weight norm too.
    ref = torch_model.WNConv2d(cin, cout, k)
    ref.load_state_dict({"weight_g": torch.from_numpy(g), "weight_v": torch.from_numpy(v),
                         "bias": torch.from_numpy(b)})
    with torch.no_grad():
        np.testing.assert_allclose(nhwc(ref(nchw(x))), want, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 3, "stride": 2, "padding": 1},  # reduce_spatial_size
        {"kernel_size": 3, "dilation": 2},  # ESA conv2
        {"kernel_size": 5, "groups": 8},  # CEA depthwise
    ],
    ids=["stride2", "dilated", "depthwise"],
)
def test_plain_conv_matches_torch(kwargs):
    k = kwargs["kernel_size"]
    d = kwargs.get("dilation", 1)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(
        8, 8, k, stride=kwargs.get("stride", 1), padding=kwargs.get("padding", d * (k - 1) // 2),
        dilation=d, groups=kwargs.get("groups", 1),
    )
    params = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0),
              "bias": conv.bias.detach().numpy()}
    x = np.random.default_rng(1).random((1, 14, 13, 8), dtype=np.float32)
    got = Conv(8, **kwargs).apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), nhwc(conv(nchw(x))), rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "shifted, images_per_sum",
    [(True, 16), (True, 2), (False, 16)],
    ids=["shifted", "shifted-chunked", "xla-conv"],
)
@pytest.mark.parametrize("k, dilation", [(5, 1), (3, 2)], ids=["5x5", "dilated3x3"])
def test_depthwise_gradients_match_torch(k, dilation, shifted, images_per_sum, monkeypatch):
    # On CPU the depthwise conv has a hand-written VJP (kernel gradient summed over images in
    # chunks); other backends use XLA's grouped convolution. Check both paths' output and
    # gradients against torch autograd on a batch of three images, which chunks of two
    # split unevenly.
    monkeypatch.setattr(layers, "_shifted_depthwise", lambda: shifted)
    monkeypatch.setattr(layers, "_IMAGES_PER_SUM", images_per_sum)
    c, pad = 8, dilation * (k - 1) // 2
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c, c, k, padding=pad, dilation=dilation, groups=c)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 14, 13, c)).astype(np.float32)
    g = rng.standard_normal((3, 14, 13, c)).astype(np.float32)
    tx = nchw(x).requires_grad_(True)
    conv(tx).backward(nchw(g))
    want_dx, want_dk = nhwc(tx.grad), conv.weight.grad.numpy().transpose(2, 3, 1, 0)

    params = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0),
              "bias": conv.bias.detach().numpy()}
    module = Conv(c, k, dilation=dilation, groups=c)
    apply = lambda p, x: module.apply({"params": p}, x)
    grouped = f"feature_group_count={c}" in str(jax.make_jaxpr(apply)(params, jnp.asarray(x)))
    assert grouped is not shifted  # the path under test is the one taken
    y, vjp = jax.vjp(apply, params, jnp.asarray(x))
    dparams, dx = vjp(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(y), nhwc(conv(nchw(x))), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(dx), want_dx, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dparams["kernel"]), want_dk, rtol=0, atol=1e-3)
    np.testing.assert_allclose(
        np.asarray(dparams["bias"]), conv.bias.grad.numpy(), rtol=0, atol=1e-3
    )


# --- sizes ----------------------------------------------------------------------------------


def flax_param_count(**kwargs) -> int:
    model = MAFFSRN(**kwargs)
    x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
    return count_params(jax.eval_shape(model.init, jax.random.key(0), x)["params"])


def torch_param_count(**kwargs) -> int:
    return sum(p.numel() for p in torch_model.MAFFSRN(**kwargs).parameters())


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"scale": 2}, 402_394),
        ({"scale": 3}, 418_774),
        ({"scale": 4}, 441_706),
        ({"scale": 2, "n_ffgs": 8}, 790_754),
        ({"scale": 3, "n_ffgs": 8}, 807_134),
        ({"scale": 4, "n_ffgs": 8}, 830_066),
        # Paper ablations at x2 (counts of the official code, facts sheet section 3).
        ({"scale": 2, "use_cea": False}, 372_186),
        ({"scale": 2, "esa_convs": "3x3x3"}, 411_738),
        ({"scale": 2, "esa_convs": "3x3+5x5"}, 418_778),
        ({"scale": 2, "fusion": "hff", "use_cea": False}, 363_482),
    ],
    ids=lambda v: _ids(v) if isinstance(v, dict) else None,
)
def test_parameter_counts(kwargs, expected):
    assert flax_param_count(**kwargs) == expected
    assert torch_param_count(**kwargs) == expected


# --- interface ------------------------------------------------------------------------------


def test_init_has_only_params():
    model = MAFFSRN(2, n_ffgs=1)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 13, 13, 3)))
    assert set(variables) == {"params"}
    leaves = jax.tree_util.tree_leaves(variables)
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)


def test_init_values_follow_the_official_code():
    model = MAFFSRN(2, n_ffgs=1, n_mabs=2)  # the smallest model with every kind of layer
    # An RBG key: threefry's unrolled hash for ~100 parameters compiles several times slower.
    key = jax.random.key(0, impl="unsafe_rbg")
    params = jax.jit(model.init)(key, jnp.zeros((1, 13, 13, 3)))["params"]
    # Lambdas: 1.0 for both FFG scales (the code; the paper says 0.5), 0.5 in the tail.
    for path, want in [(("body_0", "res_scale"), 1.0), (("body_0", "x_scale"), 1.0),
                       (("tail", "scale_k3"), 0.5), (("tail", "scale_k5"), 0.5)]:
        np.testing.assert_array_equal(params[path[0]][path[1]]["scale"], [want])
    # Weight norm starts as the plain init (gain = |v|), and kernels follow PyTorch's
    # default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    head = params["head"]
    norm = np.sqrt((np.asarray(head["kernel"]) ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(np.asarray(head["gain"]).ravel(), norm, rtol=1e-6)
    conv00 = np.asarray(params["body_0"]["b0"]["conv00"]["kernel"])
    bound = 1 / np.sqrt(32 * 9)
    assert np.abs(conv00).max() <= bound and np.abs(conv00).max() > 0.9 * bound


@pytest.mark.parametrize("shape", [(1,), (3, 3, 3, 32), (4096,), (4097,), (5, 5, 32, 48)])
def test_bucketed_init_draw_is_the_plain_uniform_draw(shape):
    from maffsrn_jax.layers import _torch_uniform

    key = jax.random.key(3)
    got = _torch_uniform(0.25)(key, shape)
    want = jax.random.uniform(key, shape, jnp.float32, -0.25, 0.25)
    assert got.shape == tuple(shape)
    np.testing.assert_array_equal(got, want)


def test_init_params_equal_a_plain_init():
    from maffsrn_jax import train_lib

    model = MAFFSRN(2, n_ffgs=1, n_mabs=2)
    key = jax.random.key(5)
    got = train_lib.init_params(model, key)  # lazy: no forward pass
    want = model.init(key, jnp.zeros((1, 13, 13, 3)))["params"]
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hw", [(12, 13), (13, 12), (5, 40), (1, 1)])
def test_inputs_under_13_raise(hw):
    model = MAFFSRN(2, n_ffgs=1)
    x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"13x13"):
        jax.eval_shape(model.init, jax.random.key(0), x)


def test_apply_on_small_input_raises_with_valid_params():
    model = MAFFSRN(3, n_ffgs=1)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 13, 13, 3)))
    with pytest.raises(ValueError, match=r"13x13"):
        jax.eval_shape(model.apply, variables, jnp.zeros((2, 12, 40, 3)))


@pytest.mark.parametrize(
    "kwargs", [{"scale": 0}, {"scale": 2, "fusion": "tree"}, {"scale": 2, "esa_convs": "7x7"}]
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        MAFFSRN(**kwargs)


def test_wrong_channel_count_raises():
    model = MAFFSRN(2, n_ffgs=1)
    with pytest.raises(ValueError, match="RGB"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 1)))


def test_bfloat16_compute_float32_params():
    model16 = MAFFSRN(2, n_ffgs=1, dtype=jnp.bfloat16)
    abstract = jax.eval_shape(model16.init, jax.random.key(0), jnp.zeros((1, 13, 13, 3)))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(abstract)} == {jnp.dtype("float32")}

    net = torch_reference(2, seed=7)
    model32, variables = to_flax(net)
    x = random_images((1, 37, 50, 3), seed=2)
    y32 = flax_forward(model32, variables, x)
    # jit here: bfloat16 convs are slow to dispatch one by one on CPU.
    y16 = np.asarray(jax.jit(model16.apply)(variables, jnp.asarray(x)))
    assert y16.dtype == np.float32 and y16.shape == y32.shape
    err = np.abs(y16 - y32)
    assert err.max() > 1e-4  # bfloat16 was really used (float32 noise is ~1e-6)
    assert err.max() < 0.05 and err.mean() < 5e-3
