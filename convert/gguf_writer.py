"""A streaming GGUF v3 writer.

Every tensor's shape and type is known before any weight is converted, so the whole header (key
values and tensor infos with their data offsets) is written first, and then the tensor data in
the same order, one tensor (or one chunk of a tensor) at a time: nothing but the current chunk is
ever held in memory. The layout follows ggml's docs/gguf.md (summarized in pyphi/gguf_format.py);
like gguf-py's GGUFWriter, every tensor's data is padded to the alignment, the last one included.

What this is not: a reader, nor a model. It writes what it is given, in the order given.
"""

from __future__ import annotations

import math
import struct
from typing import BinaryIO

import numpy as np

from pyphi.gguf_format import (
    DEFAULT_ALIGNMENT,
    GGML_BLOCK_SIZES,
    GGML_TYPE_NAMES,
    MAGIC,
    MAX_DIMS,
    NUMPY_DTYPES,
    SCALAR_FORMATS,
    VERSION,
    ValueType,
)

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return _U64.pack(len(data)) + data


def _pad(n: int, alignment: int) -> int:
    return -n % alignment


def tensor_nbytes(ne: tuple[int, ...], ggml_type: int) -> int:
    """Bytes of a tensor of ggml shape `ne` (ne[0] contiguous) in `ggml_type`."""
    block_values, block_bytes = GGML_BLOCK_SIZES[ggml_type]
    if ne and ne[0] % block_values:
        raise ValueError(
            f"rows of {ne[0]} values do not fill {GGML_TYPE_NAMES[ggml_type]} blocks of {block_values}"
        )
    return math.prod(ne) // block_values * block_bytes


class GGUFWriter:
    """Collect key values and tensor infos, `write_header(file)`, then `write_data()` each
    tensor's bytes in the order the tensors were added, closing each with `end_tensor()`."""

    def __init__(self, alignment: int = DEFAULT_ALIGNMENT):
        self._out: BinaryIO | None = None
        self._alignment = alignment
        self._kv: dict[str, bytes] = {}  # key -> encoded type and value, in insertion order
        self._tensors: list[tuple[str, tuple[int, ...], int, int]] = []  # name, ne, type, nbytes
        self._current = 0  # index of the tensor whose data is being written
        self._current_bytes = 0

    # ---- key values ------------------------------------------------------------------------

    def _add(self, key: str, encoded: bytes) -> None:
        if self._out is not None:
            raise RuntimeError("key values must be added before write_header()")
        if key in self._kv:
            raise ValueError(f"duplicate key {key!r}")
        self._kv[key] = encoded

    def add_scalar(self, key: str, value_type: ValueType, value) -> None:
        self._add(key, _U32.pack(value_type) + struct.pack(SCALAR_FORMATS[value_type], value))

    def add_string(self, key: str, value: str) -> None:
        self._add(key, _U32.pack(ValueType.STRING) + _string(value))

    def add_uint32(self, key: str, value: int) -> None:
        self.add_scalar(key, ValueType.UINT32, value)

    def add_float32(self, key: str, value: float) -> None:
        self.add_scalar(key, ValueType.FLOAT32, value)

    def add_bool(self, key: str, value: bool) -> None:
        self.add_scalar(key, ValueType.BOOL, value)

    def add_array(self, key: str, item_type: ValueType, values) -> None:
        """An array of strings or of one fixed-size type (nested arrays are not needed here)."""
        if item_type == ValueType.STRING:
            body = b"".join(_string(v) for v in values)
        else:
            body = np.asarray(values, dtype=NUMPY_DTYPES[item_type]).tobytes()
        head = _U32.pack(ValueType.ARRAY) + _U32.pack(item_type) + _U64.pack(len(values))
        self._add(key, head + body)

    # ---- tensors ---------------------------------------------------------------------------

    def add_tensor(self, name: str, ne: tuple[int, ...], ggml_type: int) -> None:
        """Declare a tensor of ggml shape `ne` (ne[0] is the contiguous dimension, i.e. the
        reverse of the numpy/HF shape) and type `ggml_type`."""
        if self._out is not None:
            raise RuntimeError("tensors must be added before write_header()")
        if not 1 <= len(ne) <= MAX_DIMS:
            raise ValueError(f"tensor {name!r}: {len(ne)} dimensions")
        if any(existing == name for existing, *_ in self._tensors):
            raise ValueError(f"duplicate tensor {name!r}")
        self._tensors.append((name, tuple(ne), ggml_type, tensor_nbytes(tuple(ne), ggml_type)))

    def write_header(self, out: BinaryIO) -> None:
        """Write magic, version, counts, key values, tensor infos and the padding before the
        data to `out`, where the tensor data will follow."""
        parts = [MAGIC, _U32.pack(VERSION), _U64.pack(len(self._tensors)), _U64.pack(len(self._kv))]
        parts += [_string(key) + encoded for key, encoded in self._kv.items()]
        offset = 0
        for name, ne, ggml_type, nbytes in self._tensors:
            dims = b"".join(_U64.pack(n) for n in ne)
            parts.append(_string(name) + _U32.pack(len(ne)) + dims + _U32.pack(ggml_type) + _U64.pack(offset))
            offset += nbytes + _pad(nbytes, self._alignment)
        header = b"".join(parts)
        self._out = out
        self._out.write(header + bytes(_pad(len(header), self._alignment)))

    def write_data(self, data) -> None:
        """Append bytes (any buffer) to the data of the current tensor."""
        if self._out is None or self._current >= len(self._tensors):
            raise RuntimeError("no tensor is waiting for data")
        n = memoryview(data).nbytes
        name, _, _, nbytes = self._tensors[self._current]
        if self._current_bytes + n > nbytes:
            raise ValueError(f"tensor {name!r}: more than its {nbytes} bytes of data")
        self._out.write(data)
        self._current_bytes += n

    def end_tensor(self) -> None:
        """Check that the current tensor got all its bytes, pad, and move to the next one."""
        name, _, _, nbytes = self._tensors[self._current]
        if self._current_bytes != nbytes:
            raise ValueError(
                f"tensor {name!r}: {self._current_bytes} bytes of data written, expected {nbytes}"
            )
        self._out.write(bytes(_pad(nbytes, self._alignment)))
        self._current += 1
        self._current_bytes = 0

    def finish(self) -> None:
        """Check that every declared tensor was written."""
        if self._current != len(self._tensors):
            raise RuntimeError(f"{len(self._tensors) - self._current} tensors were declared but not written")
