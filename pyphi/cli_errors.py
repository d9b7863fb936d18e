"""How the command-line tools (pyphi-chat, pyphi-serve) word a user error: one line, no traceback."""

from __future__ import annotations


def one_line(e: Exception) -> str:
    """The first line of an exception's message; an OSError as 'path: reason', without errno noise."""
    if isinstance(e, OSError) and e.strerror:  # not "[Errno 2] ...: 'path'"
        return f"{e.filename}: {e.strerror.lower()}" if e.filename else e.strerror.lower()
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
