"""The package's error type, the one-line error report every command prints, and the one
flag format (`HxW` sizes) that several commands read."""

from __future__ import annotations

import sys
from collections.abc import Callable


class Error(ValueError):
    """Bad input the user can fix: a flag, a file, a checkpoint, a dataset.

    Each module's error (`CheckpointError`, `DataError`, `ImageError`, ...) derives from it,
    and the message alone (no traceback) names the flag or file and what is wrong with it.
    """


def first_line(e: BaseException) -> str:
    """The first line of `e`'s message, or its type's name when the message is empty.

    Library errors can run to many lines (TFDS lists its whole catalog for an unknown name,
    XLA appends its stack), and the project reports each failure as one line.
    """
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def os_error_line(e: OSError) -> str:
    """'FILE: reason' for an OSError (disk full, permission denied, ...)."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or first_line(e)}"


def parse_size(text: str, flag: str) -> tuple[int, int]:
    """'HxW' -> (H, W), positive integers; an `Error` naming `flag` otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise Error(f"{flag} {text!r}: expected HxW, e.g. 256x256")
    h, w = (int(p) for p in parts)
    if h < 1 or w < 1:
        raise Error(f"{flag} {text!r}: sizes must be positive")
    return h, w


def run_cli(run: Callable[[], int | None]) -> int:
    """Runs a command's body; bad input becomes one `error:` line and exit status 2.

    Exit statuses: 0 done, what `run` returns, 2 bad input or an unwritable output,
    130 Ctrl-C. Anything else is a bug and keeps its traceback.
    """
    try:
        return run() or 0
    except Error as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every output goes through files.write_atomic, so nothing is left half-written.
        print("error: interrupted (no partial output was written)", file=sys.stderr)
        return 130
