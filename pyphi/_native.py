"""The cffi binding (ABI mode) to libpyphi, the C core.

The declarations are read from the public header installed beside the library (the block between
the PYPHI_CDEF markers), never retyped here. This module only loads; the friendly wrappers live in
the modules that use them.
"""

from __future__ import annotations

import os
import pathlib
import sys

import cffi

_HERE = pathlib.Path(__file__).resolve().parent
_HEADER = _HERE / "pyphi.h"
_CDEF_BEGIN = "/* PYPHI_CDEF_BEGIN */"
_CDEF_END = "/* PYPHI_CDEF_END */"
# Loads the C core from this path instead of the installed one: a sanitizer or debug build of the
# same source (tests/test_sanitized.py). Read once, at import; the header is still the installed
# one, so the library must be built from the same tree.
LIBRARY_ENV = "PYPHI_LIBRARY"


def _library_path() -> pathlib.Path:
    override = os.environ.get(LIBRARY_ENV)
    if override:
        path = pathlib.Path(override)
        if not path.is_file():
            raise ImportError(f"pyphi: {LIBRARY_ENV}={override} is not a file")
        return path
    names = {"win32": "pyphi.dll", "darwin": "libpyphi.dylib"}
    path = _HERE / names.get(sys.platform, "libpyphi.so")
    if not path.exists():
        raise ImportError(
            f"pyphi: native library {path} is missing; install the package (pip install .) "
            "rather than importing it from the source tree"
        )
    return path


def _cdef() -> str:
    text = _HEADER.read_text(encoding="utf-8")
    begin, end = text.index(_CDEF_BEGIN), text.index(_CDEF_END)
    return text[begin + len(_CDEF_BEGIN) : end]


ffi = cffi.FFI()
ffi.cdef(_cdef())
lib = ffi.dlopen(str(_library_path()))


class NativeError(RuntimeError):
    """A libpyphi call returned an error status."""


def check(status: int, what: str) -> int:
    """Raise NativeError naming `what` when a libpyphi call returned a negative status."""
    if status < 0:
        message = ffi.string(lib.pyphi_status_string(status)).decode()
        raise NativeError(f"{what}: {message}")
    return status
