"""The weights that ship inside the package: `maffsrn_x2`, `maffsrn_x3`, `maffsrn_x4`.

A name is accepted wherever a checkpoint path is (`load_pretrained("maffsrn_x4")`,
`--checkpoint maffsrn_x4`, `init_from`): `resolve` turns it into the package's file after
checking the file's SHA-256 against `weights/manifest.json`, so a damaged or replaced file is
one error line, never a silently different model. An existing path of the same name wins.

Maintainers ship new weights with

    python -m maffsrn_jax.pretrained add maffsrn_x2 RUN_DIR/best

which writes the checkpoint as float32 safetensors in the official key layout and records its
checksum, scale, parameter count and training step in the manifest (docs/weights.md says how
each was trained).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maffsrn_jax.checkpoints import CheckpointError
from maffsrn_jax.errors import run_cli
from maffsrn_jax.files import write_json_atomic

WEIGHTS_DIR = Path(__file__).with_name("weights")
MANIFEST = WEIGHTS_DIR / "manifest.json"


def _manifest() -> dict[str, dict[str, Any]]:
    if not MANIFEST.is_file():
        return {}
    try:
        return json.loads(MANIFEST.read_text())["weights"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{MANIFEST}: not a weights manifest ({e})") from e


def pretrained_names() -> list[str]:
    """The names of the weights shipped in this installation, e.g. ['maffsrn_x2', ...]."""
    return sorted(_manifest())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrained_path(name: str) -> Path:
    """The checked file of shipped weights `name`; a CheckpointError if it fails its checksum."""
    entries = _manifest()
    if name not in entries:
        shipped = ", ".join(sorted(entries)) or "none"
        raise CheckpointError(f"{name}: no such shipped weights (shipped: {shipped})")
    path = WEIGHTS_DIR / entries[name]["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: shipped weights file missing (reinstall maffsrn-jax)")
    if _sha256(path) != entries[name]["sha256"]:
        raise CheckpointError(
            f"{path}: fails its SHA-256 check against {MANIFEST.name} (damaged or replaced; "
            "reinstall maffsrn-jax)"
        )
    return path


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint path as given, or the checked file of a shipped name."""
    text = os.fspath(path_or_name)
    if not os.path.exists(text) and text in _manifest():
        return pretrained_path(text)
    return Path(text)


def add(name: str, checkpoint: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """Writes `checkpoint` (any loadable form) as shipped weights `name`; returns its entry."""
    from maffsrn_jax import checkpoints
    from maffsrn_jax.convert import flax_to_torch, load_pretrained, model_config, save_state_dict
    from maffsrn_jax.models import count_params

    model, variables = load_pretrained(checkpoint, step=step)
    file = f"{name}.safetensors"
    save_state_dict(flax_to_torch(model, variables), WEIGHTS_DIR / file)
    entry: dict[str, Any] = {
        "file": file,
        "sha256": _sha256(WEIGHTS_DIR / file),
        "model": model_config(model),
        "params": count_params(variables["params"]),
    }
    if Path(checkpoint).is_dir():
        entry["train_step"] = checkpoints.restore(checkpoint, step)[2]
    write_json_atomic(MANIFEST, {"weights": {**_manifest(), name: entry}})
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m maffsrn_jax.pretrained",
        description="List the shipped weights, or (maintainers) ship a checkpoint under a name.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the shipped names, each with its scale and checksum status")
    a = sub.add_parser("add", help="write CHECKPOINT into the package as NAME")
    a.add_argument("name")
    a.add_argument("checkpoint", help="train.py workdir (or its best/), .pt or .safetensors")
    a.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.command == "add":
            entry = add(args.name, args.checkpoint, args.step)
            print(f"{WEIGHTS_DIR / entry['file']}: x{entry['model']['scale']}, "
                  f"{entry['params']:,} parameters, sha256 {entry['sha256'][:16]}...")
            return 0
        for name in pretrained_names():
            path = pretrained_path(name)
            print(f"{name}: {path} (x{_manifest()[name]['model']['scale']}, checksum ok)")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
