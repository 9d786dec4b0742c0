"""Weight conversion between the official PyTorch layout and the Flax model, both ways.

The official layout is produced by `maffsrn_jax.torch_model` (same state_dict keys as the
authors' code). Covered: every accepted input form, the strict key check, architecture
inference, exact round trips, files (.pt, .safetensors, Orbax), the CLI, and refusal of
pickles that would run code.
"""

from __future__ import annotations

import builtins
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from PIL import Image

from maffsrn_jax import checkpoints, convert, torch_model
from maffsrn_jax.checkpoints import CheckpointError
from maffsrn_jax.models import MAFFSRN

from .conftest import REPO, flax_forward, torch_forward, torch_reference

TOL = 1e-5
# The tensors here are tiny: torch's intra-op thread pool only spins on a shared machine.
torch.set_num_threads(1)


# --- helpers --------------------------------------------------------------------------------


def numpy_state_dict(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def flat(variables: dict) -> dict:
    return traverse_util.flatten_dict(variables["params"])


def assert_same_params(a: dict, b: dict) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for path in fa:
        np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=str(path))


def assert_same_state_dict(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.dtype == y.dtype == np.float32, key
        np.testing.assert_array_equal(x, y, err_msg=key)


def images(shape=(1, 37, 50, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def with_torch_weight_norm(net: torch.nn.Module) -> torch.nn.Module:
    """Swaps every WNConv2d for an nn.Conv2d under torch.nn.utils.parametrizations.weight_norm
    holding the same g, v and bias: the newer key form (`parametrizations.weight.original0/1`).
    """
    for name, module in list(net.named_modules()):
        if not isinstance(module, torch_model.WNConv2d):
            continue
        out_ch, in_ch, k, _ = module.weight_v.shape
        conv = torch.nn.utils.parametrizations.weight_norm(
            torch.nn.Conv2d(in_ch, out_ch, k, padding=module.padding), dim=0
        )
        with torch.no_grad():
            conv.parametrizations.weight.original0.copy_(module.weight_g)
            conv.parametrizations.weight.original1.copy_(module.weight_v)
            conv.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, conv)
    return net


def folded(net: torch.nn.Module) -> torch.nn.Module:
    """Removes weight norm from a `with_torch_weight_norm` model: plain `weight` keys."""
    for module in net.modules():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrize.remove_parametrizations(module, "weight")
    return net


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return torch_reference()


@pytest.fixture(scope="module")
def official(reference) -> dict[str, np.ndarray]:
    return numpy_state_dict(reference)


@pytest.fixture(scope="module")
def converted(official) -> tuple[MAFFSRN, dict]:
    return convert.torch_to_flax(official)


# --- layout and round trips -----------------------------------------------------------------


def test_flax_to_torch_is_the_official_layout():
    # MAFFSRN x2, 4 FFGs: 343 keys (facts sheet section 2), loadable with strict=True.
    model = MAFFSRN(2)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 13, 13, 3)))
    zeros = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    state_dict = convert.flax_to_torch(model, zeros)
    assert len(state_dict) == 343
    assert state_dict["head.0.weight_g"].shape == (32, 1, 1, 1)
    assert state_dict["head.0.weight_v"].shape == (32, 3, 3, 3)
    assert state_dict["body.3.b2.bottom11_dw.0.weight"].shape == (32, 1, 5, 5)
    assert state_dict["body.0.reduction3.weight_v"].shape == (32, 64, 1, 1)
    assert state_dict["body.1.res_scale.scale"].shape == (1,)
    assert state_dict["tail.tail_k5.weight_v"].shape == (12, 32, 5, 5)
    net = torch_model.MAFFSRN(2)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in state_dict.items()} == want
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)


def test_flax_weights_run_the_same_in_torch(converted):
    # Flax-side weights (perturbed in Flax layout) -> official dict -> torch: same function.
    model, variables = converted
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda p: p * (1 + 0.2 * rng.standard_normal(p.shape)).astype(np.float32),
        variables["params"],
    )
    net = torch_model.MAFFSRN(2, n_ffgs=1).eval()
    state_dict = convert.flax_to_torch(model, {"params": params})
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    x = images(seed=1)
    np.testing.assert_allclose(
        flax_forward(model, {"params": params}, x), torch_forward(net, x), rtol=0, atol=TOL
    )


@pytest.mark.parametrize("scale, n_ffgs", [(2, 1), (3, 4), (4, 8), (4, 1)])
def test_round_trip_is_exact_and_infers_scale_and_depth(scale, n_ffgs):
    state_dict = numpy_state_dict(torch_reference(scale, n_ffgs, seed=scale))
    model, variables = convert.torch_to_flax(state_dict)
    assert (model.scale, model.n_ffgs, model.n_mabs, model.n_feats) == (scale, n_ffgs, 4, 32)
    assert_same_state_dict(convert.flax_to_torch(model, variables), state_dict)


REVEALED = [  # ablations whose keys or shapes show in the state_dict
    {"use_cea": False},
    {"fusion": "hff"},
    {"fusion": "hff", "use_cea": False},
    {"esa_convs": "3x3x3"},
    {"esa_convs": "3x3+5x5"},
    {"esa_convs": "5x5+3x3"},
]
HIDDEN = [  # same keys and shapes as the default: only wiring differs
    {"fusion": "bff"},
    {"channel_shuffle": False},
    {"esa_convs": "3x3+3x3"},
]


def _ids(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


@pytest.mark.parametrize("arch", REVEALED, ids=_ids)
def test_infers_ablation_from_keys(arch):
    state_dict = numpy_state_dict(torch_model.MAFFSRN(2, n_ffgs=1, **arch))
    model, variables = convert.torch_to_flax(state_dict)
    for key, value in arch.items():
        assert getattr(model, key) == value
    assert_same_state_dict(convert.flax_to_torch(model, variables), state_dict)


@pytest.mark.parametrize("arch", HIDDEN, ids=_ids)
def test_hidden_ablation_needs_override(arch):
    state_dict = numpy_state_dict(torch_model.MAFFSRN(2, n_ffgs=1, **arch))
    default, _ = convert.torch_to_flax(state_dict)
    assert all(getattr(default, k) != v for k, v in arch.items())
    model, variables = convert.torch_to_flax(state_dict, **arch)
    assert all(getattr(model, k) == v for k, v in arch.items())
    assert_same_state_dict(convert.flax_to_torch(model, variables), state_dict)


# --- input forms ----------------------------------------------------------------------------


def _module_prefixed(sd: dict) -> dict:
    return {f"module.{k}": v for k, v in sd.items()}


INPUT_FORMS = {
    "official": lambda sd: sd,
    "torch_tensors": lambda sd: {k: torch.from_numpy(v) for k, v in sd.items()},
    "module_prefix": _module_prefixed,
    "wrapped_state_dict": lambda sd: {"state_dict": sd, "epoch": 300},
    "wrapped_model": lambda sd: {"model": sd},
    "wrapped_params": lambda sd: {"params": sd},
    "wrapped_prefixed_with_extras": lambda sd: {
        "state_dict": _module_prefixed(sd), "epoch": 7, "optimizer": {"lr": 1e-4}
    },
    "nested_wrappers": lambda sd: {"model": {"state_dict": sd}},
    "renamed_parametrizations": lambda sd: {
        k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): v
        for k, v in sd.items()
    },
}


@pytest.mark.parametrize("form", sorted(INPUT_FORMS))
def test_input_forms_give_the_same_params(form, official, converted):
    model, variables = convert.torch_to_flax(INPUT_FORMS[form](official))
    assert model == converted[0]
    assert_same_params(variables, converted[1])


def test_torch_parametrized_weight_norm(reference, converted):
    net = with_torch_weight_norm(torch_reference())
    state_dict = numpy_state_dict(net)
    assert "head.0.parametrizations.weight.original0" in state_dict
    assert "tail.tail_k5.parametrizations.weight.original1" in state_dict
    assert not any(k.endswith(("weight_g", "weight_v")) for k in state_dict)
    x = images(seed=2)
    np.testing.assert_allclose(torch_forward(net, x), torch_forward(reference, x), atol=1e-6)
    _, variables = convert.torch_to_flax(state_dict)
    assert_same_params(variables, converted[1])


def test_folded_weight_norm_keeps_the_function(reference):
    net = folded(with_torch_weight_norm(torch_reference()))
    state_dict = numpy_state_dict(net)
    assert "head.0.weight" in state_dict and "body.0.reduction2.weight" in state_dict
    assert not any("weight_g" in k or "parametrizations" in k for k in state_dict)

    model, variables = convert.torch_to_flax(state_dict)
    x = images(seed=3)
    np.testing.assert_allclose(
        flax_forward(model, variables, x), torch_forward(reference, x), rtol=0, atol=TOL
    )
    # The gain is recomputed as the folded kernel's norm: w = g * v / |v| with v = w.
    head = variables["params"]["head"]
    norm = np.sqrt((np.asarray(head["kernel"]) ** 2).sum(axis=(0, 1, 2)))
    np.testing.assert_allclose(np.asarray(head["gain"]).ravel(), norm, rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(head["kernel"]), state_dict["head.0.weight"].transpose(2, 3, 1, 0)
    )
    # Back out it goes in the official weight_g/weight_v form.
    back = convert.flax_to_torch(model, variables)
    torch_model.MAFFSRN(2, n_ffgs=1).load_state_dict(
        {k: torch.from_numpy(v) for k, v in back.items()}, strict=True
    )


# --- strict key errors ----------------------------------------------------------------------


def _error(state_dict) -> str:
    with pytest.raises(CheckpointError) as info:
        convert.torch_to_flax(state_dict)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_keys_listed(official):
    dropped = sorted(k for k in official if k.startswith("body.0.b1."))[:7]
    message = _error({k: v for k, v in official.items() if k not in dropped})
    assert "7 missing" in message and "and 2 more" in message
    assert all(k in message for k in dropped[:5])
    assert "unexpected" not in message and "mis-shaped" not in message


def test_unexpected_keys_listed(official):
    extra = {"body.0.b0.conv9.0.weight": np.zeros((8, 8, 3, 3), np.float32),
             "aux.weight": np.zeros(3, np.float32)}
    message = _error({**official, **extra})
    assert "2 unexpected" in message and all(k in message for k in extra)


def test_mis_shaped_keys_listed(official):
    bad = {**official, "body.0.b0.conv00.0.weight": np.zeros((32, 32, 1, 1), np.float32)}
    message = _error(bad)
    assert "1 mis-shaped" in message
    assert "body.0.b0.conv00.0.weight [32, 32, 1, 1] != [32, 32, 3, 3]" in message


def test_all_problems_in_one_message(official):
    bad = {k: v for k, v in official.items() if k != "tail.scale_k3.scale"}
    bad["extra.bias"] = np.zeros(1, np.float32)
    bad["body.0.x_scale.scale"] = np.zeros(2, np.float32)
    message = _error(bad)
    for part in ("1 missing (tail.scale_k3.scale)", "1 unexpected (extra.bias)",
                 "1 mis-shaped (body.0.x_scale.scale [2] != [1])"):
        assert part in message


@pytest.mark.parametrize(
    "bad",
    [
        {"fc.weight": np.zeros((10, 3), np.float32)},
        [np.zeros(3, np.float32)],
        {"head.0.weight_v": np.zeros((32, 3, 3, 3), np.float32),
         "tail.tail_k3.weight_v": np.zeros((10, 32, 3, 3), np.float32)},  # 10 != 3 * s^2
    ],
    ids=["other_model", "not_a_mapping", "bad_tail_channels"],
)
def test_not_a_maffsrn_state_dict(bad):
    _error(bad)


# --- files ----------------------------------------------------------------------------------


def test_load_pretrained_pt_and_pth(tmp_path, reference, official, converted):
    pt = tmp_path / "model.pt"
    torch.save(reference.state_dict(), pt)  # an OrderedDict with metadata, as PyTorch saves
    pth = tmp_path / "wrapped.pth"
    tensors = {k: torch.from_numpy(v) for k, v in official.items()}
    torch.save({"state_dict": _module_prefixed(tensors), "epoch": 9}, pth)
    for path in (pt, pth, str(pt)):
        model, variables = convert.load_pretrained(path)
        assert model == converted[0]
        assert_same_params(variables, converted[1])


def test_save_state_dict_and_load_safetensors(tmp_path, official, converted):
    path = tmp_path / "sub" / "model.safetensors"
    convert.save_state_dict(official, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.safetensors"]  # no temp
    assert_same_state_dict(convert.load_state_dict(path), official)
    model, variables = convert.load_pretrained(path)
    assert model == converted[0]
    assert_same_params(variables, converted[1])
    with pytest.raises(CheckpointError, match="model.npz"):
        convert.save_state_dict(official, tmp_path / "model.npz")


def test_load_pretrained_overrides(tmp_path, official):
    path = tmp_path / "m.safetensors"
    convert.save_state_dict(official, path)
    model, _ = convert.load_pretrained(path, dtype=jnp.bfloat16, channel_shuffle=False)
    assert model.dtype == jnp.bfloat16 and not model.channel_shuffle


def test_orbax_round_trip(tmp_path, converted):
    model, variables = converted
    out = convert.save_flax(model, variables, tmp_path / "flax")
    loaded_model, loaded = convert.load_pretrained(out)
    assert loaded_model == model
    assert_same_params(loaded, variables)
    assert set(loaded) == {"params"}
    with pytest.raises(CheckpointError, match="not empty"):
        convert.save_flax(model, variables, out)


def test_orbax_workdir_latest_and_given_step(tmp_path, converted):
    # A train.py-style workdir: checkpoints/<step>/{state, model} with optimizer state.
    model, variables = converted
    workdir = tmp_path / "run"
    mngr = checkpoints.manager(workdir / checkpoints.LATEST_DIR)
    per_step = {}
    for step in (10, 20):
        params = jax.tree_util.tree_map(lambda p, s=step: np.asarray(p) + s, variables["params"])
        state = {"params": params, "step": np.int32(step), "opt_state": {"mu": params}}
        checkpoints.save(mngr, step, state, convert.model_config(model))
        per_step[step] = {"params": params}
    mngr.wait_until_finished()
    mngr.close()

    _, latest = convert.load_pretrained(workdir)
    assert_same_params(latest, per_step[20])
    _, earlier = convert.load_pretrained(workdir, step=10)
    assert_same_params(earlier, per_step[10])
    _, folder = convert.load_pretrained(workdir / checkpoints.LATEST_DIR / "10")
    assert_same_params(folder, per_step[10])
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 15 \(have \[10, 20\]\)"):
        convert.load_pretrained(workdir, step=15)


def test_orbax_checkpoint_of_another_architecture(tmp_path, converted):
    model, variables = converted
    out = convert.save_flax(model, variables, tmp_path / "flax")
    with pytest.raises(CheckpointError, match=str(out)):
        convert.load_pretrained(out, use_cea=False)  # params have CEA weights: unexpected


# --- CLI ------------------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maffsrn_jax.convert", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_cli_both_ways(tmp_path, official, converted):
    src = tmp_path / "official.pt"
    torch.save({k: torch.from_numpy(v) for k, v in official.items()}, src)
    flax_dir = tmp_path / "flax"
    done = run_cli("torch-to-flax", src, flax_dir)
    assert done.returncode == 0, done.stderr
    model, variables = convert.load_pretrained(flax_dir)
    assert model == converted[0]
    assert_same_params(variables, converted[1])

    done = run_cli("flax-to-torch", flax_dir, tmp_path / "back.safetensors")
    assert done.returncode == 0, done.stderr
    assert_same_state_dict(convert.load_state_dict(tmp_path / "back.safetensors"), official)
    # .pt output through the same entry point, in-process (a process costs seconds here).
    assert convert.main(["flax-to-torch", str(flax_dir), str(tmp_path / "back.pt")]) == 0
    net = torch_model.MAFFSRN(2, n_ffgs=1)
    net.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
    assert_same_state_dict(numpy_state_dict(net), official)


def test_cli_main_safetensors_input(tmp_path, official, converted, capsys):
    src = tmp_path / "official.safetensors"
    convert.save_state_dict(official, src)
    assert convert.main(["torch-to-flax", str(src), str(tmp_path / "out")]) == 0
    assert "x2" in capsys.readouterr().out
    _, variables = convert.load_pretrained(tmp_path / "out")
    assert_same_params(variables, converted[1])


# --- safety and bad input -------------------------------------------------------------------


class _Payload:
    """Pickles as a call to exec(): unpickling it with full pickle writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _malicious_pt(path: Path, marker: Path) -> Path:
    torch.save({"head.0.bias": torch.zeros(32), "payload": _Payload(marker)}, path)
    return path


def test_malicious_pickle_payload_is_live(tmp_path):
    # Control: the file really runs code under full unpickling, so the refusal below matters.
    marker = tmp_path / "control_marker"
    path = _malicious_pt(tmp_path / "control.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.slow
def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "marker"
    path = _malicious_pt(tmp_path / "evil.pt", marker)
    for load in (convert.load_state_dict, convert.load_pretrained):
        with pytest.raises(CheckpointError, match="refused"):
            load(path)
    done = run_cli("torch-to-flax", path, tmp_path / "out")
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.pt" in lines[0] and "refused" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


BAD = {
    "random": "random.pt",
    "text_pt": "notes.pt",
    "text": "notes.txt",
    "png": "image.png",
    "png_pt": "image.pt",
    "truncated": "truncated.pt",
    "junk_safetensors": "junk.safetensors",
    "list": "list.pt",
    "str_value": "str_value.pth",
    "empty_dir": "empty_dir",
    "missing": "missing.pt",
    "missing_dir": "no_such_dir",
}


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    """Things that are not MAFFSRN checkpoints, by kind."""
    tmp = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    paths = {kind: tmp / name for kind, name in BAD.items()}
    paths["random"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths["text_pt"].write_text("these are not the weights you are looking for\n")
    paths["text"].write_text("hello\n")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(paths["png"])
    paths["png_pt"].write_bytes(paths["png"].read_bytes())
    good = tmp / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    paths["truncated"].write_bytes(good.read_bytes()[:300])
    paths["junk_safetensors"].write_bytes(rng.integers(0, 256, 64, dtype=np.uint8).tobytes())
    torch.save([torch.zeros(2)], paths["list"])
    torch.save({"head.0.bias": torch.zeros(32), "note": "300 epochs"}, paths["str_value"])
    paths["empty_dir"].mkdir()
    return paths


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_one_clear_line(kind, bad_inputs, tmp_path, capsys):
    path = bad_inputs[kind]
    with pytest.raises(CheckpointError) as info:
        convert.load_pretrained(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message

    code = convert.main(["torch-to-flax", str(path), str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and path.name in err
    code = convert.main(["flax-to-torch", str(path), str(tmp_path / "out.pt")])
    assert code == 2 and capsys.readouterr().err.startswith("error: ")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def test_bad_input_cli_process(bad_inputs, tmp_path):
    # A real process: no traceback, and no logging noise (Orbax warns on read-only opens).
    done = run_cli("flax-to-torch", bad_inputs["empty_dir"], tmp_path / "out.pt")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "empty_dir" in done.stderr and "no checkpoint" in done.stderr

