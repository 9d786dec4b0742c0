"""What the package's commands share: the program name their usage lines show."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def prog_name(module: str, argv: list[str] | None = None) -> str:
    """The command as the user typed it, for argparse's `prog`.

    `maffsrn-upscale` for the console script, `python -m maffsrn_jax.upscale` for the module,
    `python eval.py` for a script of the checkout. `argv` is what `main` was given: a list
    means a call from Python, which names the module form.
    """
    if argv is not None or not sys.argv or not sys.argv[0]:
        return f"python -m {module}"
    started = Path(sys.argv[0])
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name == module:  # python -m <module>
        return f"python -m {module}"
    if started.suffix == ".py":
        return f"python {os.fspath(started)}"
    return started.name
