"""The one exception the converter raises for bad input.

A ConvertError names the file at fault and says what is wrong with which field, so that the CLI
can print it as one line and exit with status 2. Anything else escaping the converter is a bug
(status 1).
"""

from __future__ import annotations

import os


class ConvertError(Exception):
    """Bad input or an unusable output path: `path` is the file at fault, `message` names the
    field (key, tensor, token) and what was expected."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{os.fspath(path)}: {message}")
        self.path = os.fspath(path)
        self.message = message
