"""The 491 training images of the shipped weights, rebuilt from two public repositories.

DIV2K cannot be had everywhere; the largest real training set that can is what SR methods
trained on before it: T91 (Yang et al. 2010, 91 BMP) and the BSDS500 `train` and `test`
images (Arbelaez et al. 2011, 400 JPG). BSDS500 `val` is never used: those 100 images are
the B100 test set.

    git clone https://github.com/jiny2001/dcscn-super-resolution
    git clone https://github.com/BIDS/BSDS500
    python -m maffsrn_jax.data.train491 --t91 dcscn-super-resolution \
        --bsds500 BSDS500 --output data/train491

copies the images into one flat folder (the `folder` data source) under names that say where
each came from (`t91_t1.bmp`, `bsds500_train_100075.jpg`) and checks every file against the
SHA-256 list shipped beside this module (`train491.sha256`), so the set is exactly the one the
weights were trained on. `--write-list` records the list instead (maintainers only).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

from maffsrn_jax.data.cache import DataError
from maffsrn_jax.errors import run_cli
from maffsrn_jax.files import list_images, write_atomic

LIST_PATH = Path(__file__).with_name("train491.sha256")

# (name prefix, folder inside the repository checkout)
T91_DIRS = (("t91_", "data/yang91"),)
BSDS500_DIRS = (
    ("bsds500_train_", "BSDS500/data/images/train"),
    ("bsds500_test_", "BSDS500/data/images/test"),
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_files(t91: Path, bsds500: Path) -> dict[str, Path]:
    """{training name: source file} for the two checkouts; a missing folder is a DataError."""
    found: dict[str, Path] = {}
    for root, dirs, flag in ((t91, T91_DIRS, "--t91"), (bsds500, BSDS500_DIRS, "--bsds500")):
        for prefix, sub in dirs:
            folder = root / sub
            if not folder.is_dir():
                raise DataError(f"{flag}: {folder} not found (a checkout of the repository?)")
            for p in list_images(folder):
                found[prefix + p.name] = p
    return found


def read_list(path: Path = LIST_PATH) -> dict[str, str]:
    """{name: sha256} from a `sha256sum`-format list."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip()] = digest
    return out


def build(t91: Path, bsds500: Path, output: Path, expected: dict[str, str]) -> int:
    """Copies and checks the listed images into `output`; returns how many were copied.

    Every listed image must exist with its checksum; extra files in the checkouts are ignored.
    Files already in `output` with the right checksum are kept, so a rerun is cheap.
    """
    found = source_files(t91, bsds500)
    missing = sorted(set(expected) - set(found))
    if missing:
        raise DataError(f"{len(missing)} listed image(s) not in the checkouts, e.g. {missing[0]}")
    bad = [n for n in sorted(expected) if sha256_file(found[n]) != expected[n]]
    if bad:
        raise DataError(f"{found[bad[0]]}: checksum differs from {LIST_PATH.name} "
                        f"({len(bad)} file(s) differ)")
    output.mkdir(parents=True, exist_ok=True)
    copied = 0
    for name in sorted(expected):
        dest = output / name
        if dest.is_file() and sha256_file(dest) == expected[name]:
            continue
        write_atomic(dest, found[name].read_bytes())
        copied += 1
    return copied


def write_list(t91: Path, bsds500: Path, path: Path = LIST_PATH) -> int:
    found = source_files(t91, bsds500)
    lines = [f"{sha256_file(found[n])}  {n}\n" for n in sorted(found)]
    write_atomic(path, "".join(lines))
    return len(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Rebuild the 491-image training folder (T91 + BSDS500 train/test) from "
        "checkouts of jiny2001/dcscn-super-resolution and BIDS/BSDS500, checked against "
        "the shipped SHA-256 list."
    )
    parser.add_argument("--t91", type=Path, required=True,
                        help="checkout of jiny2001/dcscn-super-resolution")
    parser.add_argument("--bsds500", type=Path, required=True, help="checkout of BIDS/BSDS500")
    parser.add_argument("--output", type=Path, help="folder to write the images to")
    parser.add_argument("--write-list", action="store_true",
                        help="record the checkouts' files as the list (maintainers)")
    args = parser.parse_args(argv)

    def run() -> int:
        if args.write_list:
            n = write_list(args.t91, args.bsds500)
            print(f"{LIST_PATH}: {n} images")
            return 0
        if args.output is None:
            parser.error("--output is required (or --write-list)")
        expected = read_list()
        n = build(args.t91, args.bsds500, args.output, expected)
        print(f"{args.output}: {len(expected)} images checked ({n} copied)")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
