"""The GGUF reader of the runtime: a validated, memory-mapped, zero-copy view of one GGUF file.

`GGUFFile(path)` maps the file read-only, checks every field of the header, the metadata and the
tensor infos against the file size before using it, and then hands out metadata as Python values
and tensor data as numpy arrays over the mapping (no copy, so opening a multi-GB model costs only
the header parse). Any malformed file raises `GGUFError` naming the file, the key or tensor, and
the byte offset; nothing is allocated in proportion to a count the file has not yet proven it can
hold.

What it is not: a writer (that is `convert/`), a model loader (it knows no tensor names or
hyperparameters) or a dequantizer (quantized tensors come out as uint8 rows of raw ggml blocks).
A leaf module: it imports only `gguf_format`, numpy and the standard library.

Why our own reader rather than `gguf.GGUFReader` (gguf-py 0.19.0, the ecosystem's reference): it
builds numpy views for every part of every metadata string, so a Phi-4-mini-sized vocabulary
(200,064 tokens and 199,742 merges) took 9.5-15 s to open on our shared 2-core dev box; this
reader decodes each string with one slice in a tight loop and opens the same file in 0.14-0.28 s.

Layout and limits follow ggml's `gguf.cpp` (the loader llama.cpp uses) and docs/gguf.md; where this
reader differs from ggml, the function that checks says so.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .gguf_format import (
    ALIGNMENT_KEY,
    DEFAULT_ALIGNMENT,
    GGML_BLOCK_SIZES,
    GGML_TYPE_NAMES,
    MAGIC,
    MAX_DIMS,
    NUMPY_DTYPES,
    SCALAR_FORMATS,
    ValueType,
)

# GGUF v2 and v3 share one little-endian layout (v3 only added big-endian files); v1 used 32-bit
# counts and lengths and ggml dropped it ("GGUFv1 is no longer supported").
READABLE_VERSIONS = (2, 3)

# ggml's own reader accepts no nested arrays at all; gguf-py accepts any depth. A bound keeps a
# crafted file from driving the recursion into Python's stack limit.
MAX_ARRAY_NESTING = 8

# ggml stores tensor names in char[GGML_MAX_NAME = 64] with the terminating NUL (gguf.cpp rejects
# names of 64 bytes or more), so a longer name could not be loaded by llama.cpp either.
MAX_TENSOR_NAME_BYTES = 63

_HEADER = struct.Struct("<4sIQQ")  # magic, version, n_tensors, n_kv
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SCALARS = {vtype: struct.Struct(fmt) for vtype, fmt in SCALAR_FORMATS.items()}

# The fewest bytes a record can take, to bound counts before looping over them: a metadata pair is
# an empty key (8), its type (4) and a one-byte value; a tensor info is an empty name (8), n_dims
# (4), one dim (8), the type (4) and the offset (8); an array value is its element type (4) and
# count (8); a string is its length (8).
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8
_MIN_ARRAY_BYTES = 4 + 8
_MIN_STRING_BYTES = 8

# ggml element counts are int64_t (gguf.cpp checks the product of the dims against INT64_MAX).
_INT64_MAX = 2**63 - 1

# Tensor types whose elements are plain numbers get their own dtype; every other (block) type is
# shown as uint8 rows of raw block bytes. BF16 has no numpy dtype, so it is shown as its bits.
_PLAIN_DTYPES = {
    0: np.dtype("<f4"),  # F32
    1: np.dtype("<f2"),  # F16
    30: np.dtype("<u2"),  # BF16
    24: np.dtype("<i1"),  # I8
    25: np.dtype("<i2"),  # I16
    26: np.dtype("<i4"),  # I32
    27: np.dtype("<i8"),  # I64
    28: np.dtype("<f8"),  # F64
}


class GGUFError(ValueError):
    """A malformed or unexpected GGUF file; the one-line message names the file and the place."""


class TensorInfo(NamedTuple):
    """One tensor as the file describes it.

    shape is in ggml order (ne0 first: ne0 is the contiguous dimension, the row length); the numpy
    view from `GGUFFile.tensor_data` has it reversed. offset is the absolute byte offset of the
    data in the file (the data section start plus the offset stored in the tensor info).
    """

    name: str
    type: int  # ggml_type id (gguf_format.GGML_TYPE_NAMES)
    shape: tuple[int, ...]
    offset: int
    nbytes: int


class _KeyInfo(NamedTuple):
    type: ValueType
    element_type: ValueType | None  # for arrays only
    offset: int  # of the key's record, for error messages


class _Cursor:
    """Bounds-checked little-endian reads from the mapped file, advancing `pos`."""

    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf: mmap.mmap, pos: int, path: str):
        self.buf = buf
        self.pos = pos
        self.size = len(buf)
        self.path = path

    def error(self, what: str, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {what}: {problem}")

    def take(self, n: int, what: str, field: str) -> int:
        """Skip n bytes, returning where they start; an error if they run past the end."""
        start = self.pos
        if n > self.size - start:
            raise self.error(
                what,
                f"{field} [offset {start}, {n} bytes] runs past the end of the file "
                f"({self.size} bytes)",
            )
        self.pos = start + n
        return start

    def u32(self, what: str, field: str) -> int:
        return _U32.unpack_from(self.buf, self.take(4, what, field))[0]

    def u64(self, what: str, field: str) -> int:
        return _U64.unpack_from(self.buf, self.take(8, what, field))[0]

    def string(self, what: str, field: str) -> str:
        """A u64 length and that many bytes of UTF-8."""
        where = self.pos
        n = self.u64(what, f"{field} length")
        start = self.pos
        if n > self.size - start:
            raise self.error(
                what,
                f"{field} length {n} at offset {where} runs past the end of the file "
                f"({self.size} bytes)",
            )
        self.pos = start + n
        try:
            return self.buf[start : start + n].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(
                what, f"{field} at offset {start} is not valid UTF-8 (byte {start + e.start})"
            ) from None

    def length(self, min_bytes: int, what: str) -> int:
        """An array length, rejected if the rest of the file could not hold that many elements
        of at least min_bytes each (so no loop or allocation trusts a bogus count)."""
        where = self.pos
        n = self.u64(what, "array length")
        left = self.size - self.pos
        if n > left // min_bytes:
            raise self.error(
                what,
                f"array length {n} at offset {where} needs at least {n * min_bytes} bytes, "
                f"only {left} left in the file",
            )
        return n


# ---- metadata --------------------------------------------------------------------------------


def _value_type(cur: _Cursor, what: str, field: str) -> ValueType:
    where = cur.pos
    type_id = cur.u32(what, field)
    try:
        return ValueType(type_id)
    except ValueError:
        raise cur.error(
            what, f"{field} {type_id} at offset {where} is not a GGUF value type"
        ) from None


def _read_scalar(cur: _Cursor, vtype: ValueType, what: str) -> Any:
    """A string or a fixed-size value (arrays are _read_array's)."""
    if vtype is ValueType.STRING:
        return cur.string(what, "string")
    scalar = _SCALARS[vtype]
    return scalar.unpack_from(cur.buf, cur.take(scalar.size, what, vtype.name))[0]


def _read_array(cur: _Cursor, what: str, depth: int) -> tuple[Any, ValueType]:
    """An array value: numbers as a numpy array, strings as a StringArray, arrays as a list."""
    if depth > MAX_ARRAY_NESTING:
        raise cur.error(what, f"arrays nested deeper than {MAX_ARRAY_NESTING} at offset {cur.pos}")
    etype = _value_type(cur, what, "array element type")
    if etype is ValueType.STRING:
        count = cur.length(_MIN_STRING_BYTES, what)
        return _read_string_array(cur, count, what), etype
    if etype is ValueType.ARRAY:
        count = cur.length(_MIN_ARRAY_BYTES, what)
        return [_read_array(cur, what, depth + 1)[0] for _ in range(count)], etype
    dtype = np.dtype(NUMPY_DTYPES[etype])
    count = cur.length(dtype.itemsize, what)
    start = cur.take(count * dtype.itemsize, what, f"array of {count} {etype.name}")
    raw = np.frombuffer(cur.buf, dtype, count, start)
    # A copy, so metadata outlives the mapping; native byte order, aligned. Any nonzero byte is a
    # true bool, as a C reader treats it.
    values = raw != 0 if etype is ValueType.BOOL else raw.astype(dtype.newbyteorder("="))
    return values, etype


def _read_string_array(cur: _Cursor, count: int, what: str) -> StringArray:
    """The hot loop of opening a model (200k tokens + 200k merges): one slice per string, decoded
    once to check it is UTF-8 and then dropped; the strings are kept as their bytes."""
    buf, size, unpack = cur.buf, cur.size, _U64.unpack_from
    first = pos = cur.pos
    offsets = np.empty(count + 1, np.int64)  # (count + 1,): each record's start from `first`, then the end
    try:
        for i in range(count):
            start = pos + 8
            if start > size:
                raise _string_past_end(cur, what, i, pos)
            end = start + unpack(buf, pos)[0]
            if end > size:
                raise _string_past_end(cur, what, i, pos)
            buf[start:end].decode("utf-8")
            offsets[i] = pos - first
            pos = end
    except UnicodeDecodeError as e:
        raise cur.error(
            what, f"string {i} at offset {start} is not valid UTF-8 (byte {start + e.start})"
        ) from None
    offsets[count] = pos - first
    cur.pos = pos
    return StringArray(buf[first:pos], offsets)


class StringArray(Sequence[str]):
    """An array of strings as the file stores them (u64 length, then UTF-8 bytes), copied out
    of the mapping and decoded one at a time on access. A model never reads its vocabulary: as
    str objects, Phi-4-mini's 200k tokens and 200k merges held 41 MB of a loaded model's memory,
    as bytes and offsets they hold 11.5 MB. Compares equal to a list or tuple of the same strings."""

    __slots__ = ("_data", "_offsets")

    def __init__(self, data: bytes, offsets: np.ndarray):
        self._data = data  # the array's records: u64 length, then the string's bytes
        self._offsets = offsets  # (len + 1,): where each record starts, then the end of the last

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError, negative indices
        record, next_record = self._offsets[i : i + 2].tolist()
        return self._data[record + 8 : next_record].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        data, bounds = self._data, self._offsets.tolist()
        for record, next_record in zip(bounds, bounds[1:]):
            yield data[record + 8 : next_record].decode("utf-8")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (StringArray, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StringArray({len(self)} strings)"


def _string_past_end(cur: _Cursor, what: str, i: int, pos: int) -> GGUFError:
    return cur.error(
        what,
        f"string {i} (length at offset {pos}) runs past the end of the file ({cur.size} bytes)",
    )


def _read_metadata(cur: _Cursor, n_kv: int) -> tuple[dict[str, Any], dict[str, _KeyInfo]]:
    values: dict[str, Any] = {}
    infos: dict[str, _KeyInfo] = {}
    for i in range(n_kv):
        where = cur.pos
        key = cur.string(f"key #{i}", "key")
        what = f"key {key!r}"
        if key in infos:
            raise cur.error(what, f"duplicate key at offset {where} (first at {infos[key].offset})")
        vtype = _value_type(cur, what, "value type")
        element_type = None
        if vtype is ValueType.ARRAY:
            values[key], element_type = _read_array(cur, what, 1)
        else:
            values[key] = _read_scalar(cur, vtype, what)
        infos[key] = _KeyInfo(vtype, element_type, where)
    return values, infos


def _alignment(path: str, values: dict[str, Any], infos: dict[str, _KeyInfo]) -> int:
    """general.alignment: a UINT32 power of two (ggml reads it with gguf_get_val_u32)."""
    info = infos.get(ALIGNMENT_KEY)
    if info is None:
        return DEFAULT_ALIGNMENT
    what = f"{path}: key {ALIGNMENT_KEY!r} at offset {info.offset}"
    if info.type is not ValueType.UINT32:
        raise GGUFError(f"{what} has type {info.type.name}, expected UINT32")
    alignment = values[ALIGNMENT_KEY]
    if alignment == 0 or alignment & (alignment - 1):
        raise GGUFError(f"{what}: value {alignment} is not a power of two")
    return alignment


# ---- tensor infos ----------------------------------------------------------------------------


def _read_shape(cur: _Cursor, what: str) -> tuple[int, ...]:
    """n_dims in 1..MAX_DIMS, each dim >= 1, the element count within int64.

    Stricter than ggml, which lets n_dims be 0 (a scalar) and dims be 0: no model tensor has
    either, gguf.cpp's own overflow check divides INT64_MAX by ne[1..3] so llama.cpp cannot load a
    zero there anyway, and an empty tensor has no byte range for the overlap check to check.
    """
    where = cur.pos
    n_dims = cur.u32(what, "n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.error(what, f"n_dims {n_dims} at offset {where} is not in 1..{MAX_DIMS}")
    start = cur.take(8 * n_dims, what, f"{n_dims} dims")
    shape = struct.unpack_from(f"<{n_dims}Q", cur.buf, start)
    n_elements = 1
    for j, ne in enumerate(shape):
        if not 1 <= ne <= _INT64_MAX:
            raise cur.error(what, f"dim {j} = {ne} at offset {start + 8 * j} is not in 1..2^63-1")
        n_elements *= ne
    if n_elements > _INT64_MAX:
        raise cur.error(what, f"shape {list(shape)} at offset {start} has over 2^63-1 elements")
    return shape


def _read_tensor_info(cur: _Cursor, i: int) -> tuple[TensorInfo, int]:
    """One tensor info; returns it (offset still relative) and the offset of its record."""
    where = cur.pos
    name = cur.string(f"tensor #{i}", "tensor name")
    what = f"tensor {name!r}"
    if len(name.encode("utf-8")) > MAX_TENSOR_NAME_BYTES:
        raise cur.error(
            what, f"name at offset {where} is longer than {MAX_TENSOR_NAME_BYTES} bytes"
        )
    shape = _read_shape(cur, what)
    type_at = cur.pos
    ggml_type = cur.u32(what, "type")
    if ggml_type not in GGML_BLOCK_SIZES:
        raise cur.error(what, f"type {ggml_type} at offset {type_at} is not a known ggml type")
    block_values, block_bytes = GGML_BLOCK_SIZES[ggml_type]
    if shape[0] % block_values:
        raise cur.error(
            what,
            f"row of {shape[0]} values is not a multiple of the {GGML_TYPE_NAMES[ggml_type]} "
            f"block size {block_values} (info at offset {where})",
        )
    nbytes = shape[0] // block_values * block_bytes
    for ne in shape[1:]:
        nbytes *= ne
    offset = cur.u64(what, "data offset")
    return TensorInfo(name, ggml_type, shape, offset, nbytes), where


def _read_tensor_infos(cur: _Cursor, n_tensors: int, alignment: int) -> dict[str, TensorInfo]:
    """All tensor infos, with offsets made absolute and checked against the data section.

    ggml also requires the tensors to be packed in info order; any aligned, non-overlapping
    placement inside the file is enough for a reader that only makes views of it.
    """
    relative: list[tuple[TensorInfo, int]] = []
    seen: dict[str, int] = {}
    for i in range(n_tensors):
        info, where = _read_tensor_info(cur, i)
        if info.name in seen:
            raise cur.error(
                f"tensor {info.name!r}",
                f"duplicate tensor name at offset {where} (first at {seen[info.name]})",
            )
        seen[info.name] = where
        relative.append((info, where))
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    tensors = {}
    for info, where in relative:
        what = f"tensor {info.name!r}"
        if info.offset % alignment:
            raise cur.error(
                what,
                f"data offset {info.offset} (info at offset {where}) is not a multiple of the "
                f"alignment {alignment}",
            )
        absolute = info._replace(offset=data_offset + info.offset)
        if absolute.nbytes > cur.size - absolute.offset:
            raise cur.error(
                what,
                f"data [offset {absolute.offset}, {absolute.nbytes} bytes] runs past the end of "
                f"the file ({cur.size} bytes)",
            )
        tensors[info.name] = absolute
    _check_no_overlap(cur, tensors)
    cur.pos = data_offset
    return tensors


def _check_no_overlap(cur: _Cursor, tensors: dict[str, TensorInfo]) -> None:
    ordered = sorted(tensors.values(), key=lambda t: t.offset)
    for before, after in zip(ordered[:-1], ordered[1:], strict=True):
        if after.offset < before.offset + before.nbytes:
            raise cur.error(
                f"tensor {after.name!r}",
                f"data [offset {after.offset}, {after.nbytes} bytes] overlaps tensor "
                f"{before.name!r} [offset {before.offset}, {before.nbytes} bytes]",
            )


# ---- the file --------------------------------------------------------------------------------


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    """magic, version, n_tensors, n_kv; returns (version, n_tensors, n_kv)."""
    start = cur.take(_HEADER.size, "header", "header")
    magic, version, n_tensors, n_kv = _HEADER.unpack_from(cur.buf, start)
    if magic != MAGIC:
        raise cur.error("header", f"magic {magic!r} at offset 0 is not {MAGIC!r}")
    if version & 0xFFFF == 0:
        # ggml's test: a v3 file of the other byte order reads as 0x03000000.
        raise cur.error("header", f"version {version:#x} at offset 4 looks like a big-endian GGUF")
    if version not in READABLE_VERSIONS:
        raise cur.error(
            "header", f"version {version} at offset 4 is not one of {READABLE_VERSIONS}"
        )
    left = cur.size - cur.pos
    if n_kv > left // _MIN_KV_BYTES:
        raise cur.error("header", f"n_kv {n_kv} at offset 16 cannot fit in the {left} bytes left")
    if n_tensors > (left - n_kv * _MIN_KV_BYTES) // _MIN_TENSOR_INFO_BYTES:
        raise cur.error(
            "header", f"n_tensors {n_tensors} at offset 8 cannot fit in the {left} bytes left"
        )
    return version, n_tensors, n_kv


def _map(path: str) -> mmap.mmap:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER.size:
            raise GGUFError(f"{path}: header: file of {size} bytes is shorter than a GGUF header")
        # The mapping holds its own reference to the file, so the descriptor can close now.
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


class GGUFFile:
    """A GGUF file, validated and mapped read-only. Use as a context manager or call close().

    Raises GGUFError for a malformed file and OSError (unchanged) when it cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        self._map: mmap.mmap | None = _map(self.path)
        try:
            cur = _Cursor(self._map, 0, self.path)
            self.version, n_tensors, n_kv = _read_header(cur)
            self.metadata, self._keys = _read_metadata(cur, n_kv)
            self.alignment = _alignment(self.path, self.metadata, self._keys)
            self.tensors = _read_tensor_infos(cur, n_tensors, self.alignment)
            self.data_offset = cur.pos
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the mapping; tensor views still alive keep it mapped until they are freed."""
        if self._map is None:
            return
        try:
            self._map.close()
        except BufferError:
            # Views from tensor_data() still export the buffer; the mmap object unmaps itself
            # when the last of them is garbage collected.
            pass
        self._map = None

    # ---- metadata ----

    def value_type(self, key: str) -> ValueType:
        """The stored type of key (KeyError if absent)."""
        return self._keys[key].type

    def element_type(self, key: str) -> ValueType | None:
        """The element type of an array key, None for a scalar (KeyError if absent)."""
        return self._keys[key].element_type

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(
        self, key: str, expected_type: ValueType, element_type: ValueType | None = None
    ) -> Any:
        """The value of key, which must exist with expected_type (and, for arrays, element_type)."""
        info = self._keys.get(key)
        if info is None:
            raise GGUFError(f"{self.path}: key {key!r} is missing")
        if info.type != expected_type or (
            element_type is not None and info.element_type != element_type
        ):
            raise GGUFError(
                f"{self.path}: key {key!r} at offset {info.offset} has type "
                f"{_type_name(info.type, info.element_type)}, expected "
                f"{_type_name(ValueType(expected_type), element_type)}"
            )
        return self.metadata[key]

    # ---- tensors ----

    def tensor_data(self, name: str) -> np.ndarray:
        """A read-only view of the tensor's bytes in the mapping, shape reversed to numpy order.

        Plain types (F32, F16, BF16 as uint16 bits, I8..I64, F64) have their element dtype and
        shape (ne[n-1], ..., ne0); block types are uint8 of shape (ne[n-1], ..., ne1, row_bytes).
        """
        if self._map is None:
            raise ValueError(f"{self.path}: the file is closed")
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(f"{self.path}: tensor {name!r} is missing")
        dtype = _PLAIN_DTYPES.get(info.type)
        if dtype is None:
            dtype = np.dtype(np.uint8)
            block_values, block_bytes = GGML_BLOCK_SIZES[info.type]
            shape = info.shape[:0:-1] + (info.shape[0] // block_values * block_bytes,)
        else:
            shape = info.shape[::-1]
        view = np.frombuffer(self._map, dtype, info.nbytes // dtype.itemsize, info.offset)
        return view.reshape(shape)


def _type_name(vtype: ValueType, element_type: ValueType | None) -> str:
    if vtype is ValueType.ARRAY and element_type is not None:
        return f"ARRAY of {element_type.name}"
    return vtype.name
