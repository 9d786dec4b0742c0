"""Weight conversion between the official PyTorch MAFFSRN and this Flax port, both ways.

    maffsrn-convert torch-to-flax IN.pt|IN.safetensors OUT_DIR
    maffsrn-convert flax-to-torch CKPT_DIR OUT.pt|OUT.safetensors

.pt/.pth files need the torch extra (pip install 'maffsrn-jax[torch]'); .safetensors none.

PyTorch side: the official state_dict keys (`head.0.weight_g`, `body.0.b0.conv00.0.weight`,
...), OIHW kernels, weight norm as `weight_g` [out, 1, 1, 1] / `weight_v`. Flax side: HWIO
kernels, gains [1, 1, 1, out]. The round trip official -> Flax -> official is exact.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from maffsrn_jax import checkpoints, pretrained
from maffsrn_jax.checkpoints import CheckpointError
from maffsrn_jax.cli import prog_name
from maffsrn_jax.errors import run_cli
from maffsrn_jax.extras import require
from maffsrn_jax.files import write_file_atomic
from maffsrn_jax.models import MAFFSRN, MIN_INPUT_SIZE

__all__ = [
    "CheckpointError",
    "flax_to_torch",
    "load_pretrained",
    "load_state_dict",
    "model_config",
    "save_state_dict",
    "torch_to_flax",
]

# Submodules that the official `conv_block` wraps in nn.Sequential (keys gain a '.0').
_SEQUENTIAL_CONVS = {
    "conv00", "conv01", "conv1", "conv2", "conv3", "increase_channels", "bottom11", "bottom11_dw",
}
_WRAPPER_KEYS = ("state_dict", "model", "params", "model_state_dict")
_MODEL_FIELDS = (
    "scale", "n_ffgs", "n_mabs", "n_feats", "fusion", "use_cea", "channel_shuffle", "esa_convs",
)


def model_config(model: MAFFSRN) -> dict[str, Any]:
    """The constructor fields that define the architecture (JSON-serialisable)."""
    return {f: getattr(model, f) for f in _MODEL_FIELDS}


def _torch_key(path: tuple[str, ...]) -> str:
    """Flax parameter path -> official state_dict key."""
    *modules, leaf = path
    parts = []
    for m in modules:
        if m == "head":
            parts += ["head", "0"]
        elif m.startswith("body_"):
            parts += ["body", m[len("body_") :]]
        else:
            parts.append(m)
            if m in _SEQUENTIAL_CONVS:
                parts.append("0")
    return ".".join(parts + [leaf])


def _leaf_names(flat_params: Mapping[tuple[str, ...], Any]) -> dict[tuple[str, ...], str]:
    """Maps each Flax path to its torch key, naming weight-normed kernels `weight_v`."""
    normed = {p[:-1] for p in flat_params if p[-1] == "gain"}
    names = {}
    for path in flat_params:
        leaf = path[-1]
        if leaf == "kernel":
            leaf = "weight_v" if path[:-1] in normed else "weight"
        elif leaf == "gain":
            leaf = "weight_g"
        names[path] = _torch_key((*path[:-1], leaf))
    return names


def _to_torch_layout(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # HWIO -> OIHW
    if path[-1] == "gain":
        return x.reshape(-1, 1, 1, 1)
    return x


def _to_flax_layout(path: tuple[str, ...], x: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return np.ascontiguousarray(x.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    if path[-1] == "gain":
        return x.reshape(1, 1, 1, -1)
    return x


def flax_to_torch(model: MAFFSRN, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax variables -> a state_dict (numpy float32) in the official layout.

    `torch.load_state_dict({k: torch.from_numpy(v) ...}, strict=True)` accepts it on the
    official model and on `maffsrn_jax.torch_model.MAFFSRN`.
    """
    del model  # the parameter tree alone determines the keys
    params = variables.get("params", variables)
    flat = traverse_util.flatten_dict(jax.device_get(params))
    names = _leaf_names(flat)
    return {
        names[p]: _to_torch_layout(p, np.asarray(v, dtype=np.float32)) for p, v in flat.items()
    }


def _unwrap(obj: Any) -> Mapping[str, Any]:
    """Finds the state_dict inside the common wrappers ({'state_dict': ...}, ...)."""
    for _ in range(3):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            weights = any(isinstance(k, str) and k.endswith(("weight", "bias")) for k in obj)
            if inner is not None and not weights:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"expected a state_dict (a mapping of tensors), got {type(obj).__name__}"
        )
    return obj


def _normalise_keys(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Strips `module.`, maps the parametrization form of weight norm to weight_g/weight_v."""
    out = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(f"state_dict keys must be strings, got {key!r}")
        k = key[len("module.") :] if key.startswith("module.") else key
        k = k.replace(".parametrizations.weight.original0", ".weight_g")
        k = k.replace(".parametrizations.weight.original1", ".weight_v")
        out[k] = _as_numpy(value, key)
    return out


def _as_numpy(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is only imported by its owner
        value = value.detach().cpu().float().numpy()
    try:
        # A copy: numpy views of torch tensors would follow later in-place updates of the model.
        return np.array(value, dtype=np.float32, copy=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{key}: not a tensor ({type(value).__name__})") from e


def _infer_config(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Reads the architecture off the weights: scale, FFG/MAB counts, ablation variants."""
    head = sd.get("head.0.weight_v", sd.get("head.0.weight"))
    tail = sd.get("tail.tail_k3.weight_v", sd.get("tail.tail_k3.weight"))
    if head is None or tail is None:
        named = (("head.0.weight_v", head), ("tail.tail_k3.weight_v", tail))
        missing = [k for k, v in named if v is None]
        raise CheckpointError(f"not a MAFFSRN state_dict: missing {', '.join(missing)}")
    scale = int(round(np.sqrt(tail.shape[0] / 3)))
    if 3 * scale * scale != tail.shape[0]:
        raise CheckpointError(f"tail.tail_k3 has {tail.shape[0]} output channels, not 3*scale^2")
    ffgs = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k))}
    mabs = {int(m.group(1)) for k in sd if (m := re.match(r"body\.0\.b(\d+)\.", k))}
    esa = tuple(
        sd[f"body.0.b0.conv{i}.0.weight"].shape[-1]
        for i in range(1, 4)
        if f"body.0.b0.conv{i}.0.weight" in sd
    )
    esa_name = {(3, 3): "3x3+dil3x3", (3, 3, 3): "3x3x3", (3, 5): "3x3+5x5", (5, 3): "5x5+3x3"}
    return {
        "scale": scale,
        "n_ffgs": len(ffgs),
        "n_mabs": len(mabs) or 4,
        "n_feats": int(head.shape[0]),
        "fusion": "hff" if any(re.match(r"body\.\d+\.reduction\.", k) for k in sd) else "mbff",
        "use_cea": any(".bottom11." in k for k in sd),
        "channel_shuffle": True,
        "esa_convs": esa_name.get(esa, "3x3+dil3x3"),
    }


def _summarise(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:5])
    more = f" and {len(items) - 5} more" if len(items) > 5 else ""
    return f"{len(items)} {kind} ({shown}{more})"


def torch_to_flax(state_dict: Mapping[str, Any], **overrides: Any) -> tuple[MAFFSRN, dict]:
    """An official-layout state_dict -> (model, {'params': ...}).

    Scale, FFG count and ablation variants are inferred from the weights; `overrides` sets
    what the keys cannot tell (e.g. `fusion='bff'`, `channel_shuffle=False`, `dtype`).
    Plain `weight` on a weight-normed layer (weight norm removed) is accepted: the gain is
    set to its norm, so the function is unchanged.
    """
    sd = _normalise_keys(_unwrap(state_dict))
    config = {**_infer_config(sd), **overrides}
    model = MAFFSRN(**config)
    size = MIN_INPUT_SIZE
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    flat = traverse_util.flatten_dict(abstract["params"])
    names = _leaf_names(flat)

    params, missing, mis_shaped = {}, [], []
    used = set()
    for path, key in names.items():
        want = tuple(_to_torch_layout(path, np.empty(flat[path].shape, np.float32)).shape)
        value = sd.get(key)
        if value is None and path[-1] in ("kernel", "gain"):
            folded = sd.get(key.rsplit(".", 1)[0] + ".weight")
            if folded is not None:
                key, value = key.rsplit(".", 1)[0] + ".weight", folded
                if path[-1] == "gain":
                    value = np.sqrt(np.sum(np.square(folded), axis=(1, 2, 3), keepdims=True))
        if value is None:
            missing.append(key)
            continue
        used.add(key)
        if tuple(value.shape) != want:
            mis_shaped.append(f"{key} {list(value.shape)} != {list(want)}")
            continue
        params[path] = _to_flax_layout(path, value)
    unexpected = sorted(set(sd) - used)
    problems = [
        _summarise(kind, items)
        for kind, items in (
            ("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped)
        )
        if items
    ]
    if problems:
        desc = ", ".join(f"{k}={v}" for k, v in config.items() if k in _MODEL_FIELDS)
        raise CheckpointError(f"state_dict does not fit MAFFSRN({desc}): " + "; ".join(problems))
    return model, {"params": traverse_util.unflatten_dict(params)}


def _unpickler_reason(e: BaseException) -> str:
    """The informative line of a torch.load failure (its messages carry paragraphs of advice)."""
    text = str(e).strip()
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    line = detail.group(1) if detail else (text.splitlines()[0] if text else "")
    return f"{type(e).__name__}: {line[:160]}" if line else type(e).__name__


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.pt`/`.pth` (tensors only: never unpickles code) or `.safetensors` file."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_dir():
        raise CheckpointError(f"{p}: is a directory, not a .pt/.pth/.safetensors file")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from e
        return _normalise_keys(tensors)
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        torch = require("torch", "torch", f"{p}: reading a PyTorch file")
        import pickle

        try:
            # weights_only: tensors and containers only; any other pickled object is refused
            # before it can run.
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if refused:
                raise CheckpointError(
                    f"{p}: refused to load: the pickle calls {refused.group(1)}, not just "
                    "tensors; only plain state_dicts are read"
                ) from e
            raise CheckpointError(f"{p}: not a PyTorch checkpoint ({_unpickler_reason(e)})") from e
        except Exception as e:  # untrusted bytes can fail anywhere in the unpickler
            raise CheckpointError(f"{p}: not a PyTorch checkpoint ({_unpickler_reason(e)})") from e
        try:
            return _normalise_keys(_unwrap(obj))
        except CheckpointError as e:
            raise CheckpointError(f"{p}: {e}") from e
    raise CheckpointError(
        f"{p}: not a checkpoint (expected an Orbax directory, a .pt/.pth or a .safetensors file)"
    )


def load_pretrained(
    path: str | os.PathLike, step: int | None = None, **overrides: Any
) -> tuple[MAFFSRN, dict]:
    """(model, variables) from an Orbax checkpoint directory (a train.py workdir, a manager
    root or a step folder; the latest step unless `step` is given), a `.pt`/`.pth`, or a
    `.safetensors` file, or the name of shipped weights (`maffsrn_x4`, see
    `pretrained_names()`). `overrides` as in `torch_to_flax` (e.g. `dtype=jnp.bfloat16`).
    """
    p = pretrained.resolve(path)
    if p.is_dir():
        state, config, _ = checkpoints.restore(p, step)
        if "params" not in state:
            raise CheckpointError(f"{p}: checkpoint has no params")
        try:
            model = MAFFSRN(**{**config, **overrides})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{p}: bad model description in checkpoint ({e})") from e
        params = jax.tree_util.tree_map(np.asarray, state["params"])
        try:
            # Check the tree against the architecture now rather than failing inside apply.
            torch_to_flax(flax_to_torch(model, {"params": params}), **{**config, **overrides})
        except CheckpointError as e:
            raise CheckpointError(f"{p}: {e}") from e
        return model, {"params": params}
    state_dict = load_state_dict(p)
    try:
        return torch_to_flax(state_dict, **overrides)
    except CheckpointError as e:
        raise CheckpointError(f"{p}: {e}") from e


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes `.safetensors` or `.pt` (by extension) atomically."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".pt", ".pth", ".safetensors"):
        raise CheckpointError(f"{p}: output must end in .pt, .pth or .safetensors")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
        write_file_atomic(p, lambda tmp: save_file(arrays, tmp))
    else:
        torch = require("torch", "torch", f"{p}: writing a PyTorch file")
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
        write_file_atomic(p, lambda tmp: torch.save(tensors, tmp))


def save_flax(model: MAFFSRN, variables: Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Writes an Orbax checkpoint (step 0) for `load_pretrained` and train.py's `init_from`."""
    d = Path(directory)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise CheckpointError(f"{d}: output directory exists and is not empty")
    mngr = checkpoints.manager(d)
    checkpoints.save(mngr, 0, {"params": variables["params"]}, model_config(model))
    mngr.wait_until_finished()
    mngr.close()
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("maffsrn_jax.convert", argv),
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t2f = sub.add_parser("torch-to-flax", help="official .pt/.pth/.safetensors -> Orbax directory")
    t2f.add_argument("input")
    t2f.add_argument("output_dir")
    f2t = sub.add_parser("flax-to-torch", help="Orbax checkpoint -> official .pt or .safetensors")
    f2t.add_argument("checkpoint")
    f2t.add_argument("output")
    f2t.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    if args.command == "torch-to-flax":
        model, variables = load_pretrained(args.input)
        save_flax(model, variables, args.output_dir)
        print(f"wrote {args.output_dir} (MAFFSRN x{model.scale}, {model.n_ffgs} FFGs)")
    else:
        model, variables = load_pretrained(args.checkpoint, step=args.step)
        save_state_dict(flax_to_torch(model, variables), args.output)
        print(f"wrote {args.output} (MAFFSRN x{model.scale}, {model.n_ffgs} FFGs)")


if __name__ == "__main__":
    sys.exit(main())
