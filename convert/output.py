"""Writing an output file safely, and checking before that it can be written.

`write_atomically` runs the writer on a temporary file beside the output, fsyncs it and renames
it into place, so the output appears whole or not at all; `check_output` and `check_types` fail
early, before any work, on an unusable output path or a tensor type this build cannot write.

What this is not: the GGUF layout (gguf_writer.py) or the choice of types (mixes.py).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pyphi.gguf_format import GGML_TYPE_NAMES

from .errors import ConvertError


def check_output(out_path: Path, force: bool) -> None:
    if out_path.is_dir():
        raise ConvertError(out_path, "is a directory")
    if out_path.exists() and not force:
        raise ConvertError(out_path, "exists (use --force to overwrite it)")
    if not out_path.parent.is_dir():
        raise ConvertError(out_path.parent, "output directory does not exist")


def check_types(tensor_types, out_type: str, where) -> None:
    """Every (tensor name, ggml type) of the planned file is a type the C core can write; else a
    ConvertError at `where` naming the first tensor that is not."""
    from pyphi.quants import type_names

    stored = {name.upper() for name in type_names().values()}
    for name, ggml_type in tensor_types:
        if GGML_TYPE_NAMES[ggml_type] not in stored:
            raise ConvertError(
                where,
                f"--type {out_type} needs {GGML_TYPE_NAMES[ggml_type]} for tensor {name!r}, which this "
                f"build of pyphi cannot write (it writes {', '.join(sorted(stored))})",
            )


def write_atomically(out_path: Path, force: bool, write) -> None:
    """Run `write(file)` on a temporary file in the output's directory; fsync it, then rename it
    to `out_path` (the file appears whole or not at all). The temporary file is removed on any
    failure, including KeyboardInterrupt."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    except OSError as e:
        raise ConvertError(out_path.parent, f"cannot create a file here: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            if out_path.exists() and not force:
                raise ConvertError(out_path, "appeared during the conversion (use --force to overwrite it)")
            os.replace(tmp, out_path)
        except OSError as e:
            raise ConvertError(out_path, f"cannot write: {e.strerror or e}") from None
        _fsync_directory(out_path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(path: Path) -> None:
    """Make the rename durable (POSIX); not possible, and not needed, on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
