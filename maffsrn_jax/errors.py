"""Error text for the one-line messages every entry point prints."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of `e`'s message, or its type's name when the message is empty.

    Library errors can run to many lines (TFDS lists its whole catalog for an unknown name,
    XLA appends its stack), and the project reports each failure as one line.
    """
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
