"""A Hugging Face checkpoint directory as the converter reads it: JSON files and safetensors shards.

The safetensors format (huggingface/safetensors docs, "Format"): an 8-byte little-endian header
length N, N bytes of JSON header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {...}}`, then the data section; offsets are relative to the data section. The
shards are parsed here and mapped read-only, because numpy has no bfloat16 and the `safetensors`
numpy backend cannot load it: tensors leave this module as raw rows plus a ggml type id, and the
C core converts them. Every header is validated against the file size before anything is written,
so a truncated shard is reported up front.

What this is not: a model. It knows nothing of tensor names or shapes (that is `phi3.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from pyphi.gguf_format import GGML_TYPE_NAMES

from .errors import ConvertError

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_GGML_TYPE = {name: type_id for type_id, name in GGML_TYPE_NAMES.items()}
# safetensors dtype -> (ggml type id, bytes per value). These three are what HF checkpoints of
# this model family hold; anything else (quantized or int checkpoints) is refused.
DTYPES = {"BF16": (_GGML_TYPE["BF16"], 2), "F16": (_GGML_TYPE["F16"], 2), "F32": (_GGML_TYPE["F32"], 4)}
_HEADER_LENGTH = struct.Struct("<Q")
# The safetensors library refuses headers over 100 MB (MAX_HEADER_SIZE, safetensors/src/tensor.rs),
# so no real checkpoint has one; the bound keeps a crafted length from making us read that much.
MAX_HEADER_BYTES = 100_000_000


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook: a JSON object naming a key twice is refused (json keeps the last one
    silently, so two readers could disagree about which tensor or setting the file holds)."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKey(duplicate)
    return value


class _DuplicateKey(ValueError):
    pass


def parse_json(text: str | bytes) -> object:
    """json.loads with duplicate keys refused; every failure is a ValueError whose message says
    where (JSONDecodeError: line, column and character), including JSON nested deeper than Python's
    recursion limit and integers longer than its int-to-str digit limit."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise ValueError(f"key {e.args[0]!r} appears twice in one object") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: Path, *, required: bool = True) -> dict | None:
    """The JSON object in `path`; None if the file is absent and not `required`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConvertError(path, "missing") from None
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(path, f"cannot read: {e}") from None
    try:
        value = parse_json(text)
    except ValueError as e:
        raise ConvertError(path, f"not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ConvertError(path, f"expected a JSON object, found {type(value).__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: `begin`/`end` are absolute byte offsets in `path`."""

    name: str
    path: Path
    dtype: str  # safetensors dtype name, one of DTYPES
    shape: tuple[int, ...]  # HF order: shape[-1] is contiguous
    begin: int
    end: int

    @property
    def ggml_type(self) -> int:
        return DTYPES[self.dtype][0]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def row_bytes(self) -> int:
        return DTYPES[self.dtype][1] * (self.shape[-1] if self.shape else 1)

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1])


class SafetensorsFile:
    """One .safetensors file, its header validated and its bytes mapped read-only.

    The checks are the safetensors library's (safetensors/src/tensor.rs `Metadata::validate`):
    a header of at most MAX_HEADER_BYTES of UTF-8 JSON, an object whose keys appear once, each
    tensor's byte count equal to its dtype size times its shape's product, and the tensors
    tiling the data section exactly (sorted by offset, each starting where the previous one
    ended, the last ending at the end of the file). Errors name the file, the tensor and the
    byte offset."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                header_length, header = self._read_header(f, size)
                data_start = _HEADER_LENGTH.size + header_length
                self._check_metadata(header.get("__metadata__"))
                infos = [
                    self._tensor_info(name, entry, data_start)
                    for name, entry in header.items()
                    if name != "__metadata__"
                ]
                infos.sort(key=lambda info: (info.begin, info.end))
                self._check_tiling(infos, data_start, size)
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise ConvertError(path, "missing") from None
        except OSError as e:
            raise ConvertError(path, f"cannot read: {e}") from None
        # In file order, so that reading the tensors in turn reads the file front to back.
        self.tensors = {info.name: info for info in infos}

    def _read_header(self, f, size: int) -> tuple[int, dict]:
        """(length, parsed JSON) of the header of the file `f` of `size` bytes."""
        if size < _HEADER_LENGTH.size:
            raise ConvertError(self.path, f"truncated: {size} bytes, shorter than the 8-byte header length")
        (length,) = _HEADER_LENGTH.unpack(f.read(_HEADER_LENGTH.size))
        if length > MAX_HEADER_BYTES:
            raise ConvertError(
                self.path, f"header length {length} at offset 0 is over the {MAX_HEADER_BYTES} bytes allowed"
            )
        if _HEADER_LENGTH.size + length > size:
            raise ConvertError(
                self.path,
                f"truncated: the header length at offset 0 says {length} bytes of JSON, "
                f"the file has {size - _HEADER_LENGTH.size} after the length",
            )
        raw = f.read(length)
        try:
            header = parse_json(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConvertError(
                self.path, f"header is not valid UTF-8 (byte at offset {_HEADER_LENGTH.size + e.start})"
            ) from None
        except ValueError as e:
            raise ConvertError(self.path, f"header at offset {_HEADER_LENGTH.size} is not valid JSON: {e}") from None
        if not isinstance(header, dict):
            raise ConvertError(self.path, f"header at offset {_HEADER_LENGTH.size} is not a JSON object")
        self._raw_header = raw
        return length, header

    def _where(self, name: str) -> str:
        """'header offset N': where the tensor's entry starts in the file, for messages."""
        at = self._raw_header.find(json.dumps(name, ensure_ascii=False).encode("utf-8"))
        if at < 0:
            at = self._raw_header.find(json.dumps(name).encode("utf-8"))
        return f"header entry at offset {_HEADER_LENGTH.size + at}" if at >= 0 else "header entry"

    def _check_metadata(self, metadata) -> None:
        """`__metadata__` is an object of string -> string (safetensors' format)."""
        if metadata is None:
            return
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ConvertError(
                self.path, f"'__metadata__' ({self._where('__metadata__')}) is not an object of strings"
            )

    def _tensor_info(self, name: str, entry, data_start: int) -> TensorInfo:
        def bad(what: str) -> ConvertError:
            return ConvertError(self.path, f"tensor {name!r} ({self._where(name)}): {what}")

        if not isinstance(entry, dict):
            raise bad("header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise bad(f"'dtype' is {dtype!r}, expected one of {', '.join(DTYPES)}")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise bad(f"'shape' is {shape!r}, expected a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
            raise bad(f"'data_offsets' is {offsets!r}, expected [begin, end]")
        begin, end = offsets
        n_bytes = math.prod(shape) * DTYPES[dtype][1]  # Python ints: no overflow to check
        if not 0 <= begin <= end or end - begin != n_bytes:
            raise bad(f"'data_offsets' {offsets} do not span the {n_bytes} bytes of {dtype} {shape}")
        return TensorInfo(name, self.path, dtype, tuple(shape), data_start + begin, data_start + end)

    def _check_tiling(self, infos: list[TensorInfo], data_start: int, size: int) -> None:
        """The tensors cover the data section without overlap, gap or trailing bytes."""
        expected = data_start
        for info in infos:
            if info.end > size:
                raise ConvertError(
                    self.path,
                    f"truncated: tensor {info.name!r} data [offset {info.begin}, {info.nbytes} bytes] "
                    f"ends past the end of the file ({size} bytes)",
                )
            if info.begin != expected:
                problem = "overlaps the tensor before it" if info.begin < expected else "leaves a gap before it"
                raise ConvertError(
                    self.path,
                    f"tensor {info.name!r} data at offset {info.begin} {problem} (expected offset {expected})",
                )
            expected = info.end
        if expected != size:
            raise ConvertError(
                self.path, f"{size - expected} bytes at offset {expected} after the last tensor belong to none"
            )

    def rows(self, info: TensorInfo, first: int, count: int) -> np.ndarray:
        """Raw bytes of rows [first, first + count) of `info`: a uint8 view of the mapping."""
        offset = info.begin + first * info.row_bytes
        rows = np.frombuffer(self._map, dtype=np.uint8, count=count * info.row_bytes, offset=offset)
        # The format does not align tensor data (an odd-length F16 tensor shifts the next one), but
        # the C core reads F16/BF16/F32 rows as 2- and 4-byte values: copy such rows to aligned memory.
        return rows if offset % DTYPES[info.dtype][1] == 0 else rows.copy()

    def release(self, info: TensorInfo, first: int, count: int) -> None:
        """Drop the pages of rows [first, first + count) from this process's resident set.

        Mapped file pages that were read stay resident until unmapped; without this, converting
        the 7.7 GB checkpoint would grow RSS to the checkpoint size. The bytes stay readable
        (the kernel reloads them from the file)."""
        if not hasattr(self._map, "madvise"):  # Windows: no madvise; pages are reclaimed anyway
            return
        begin = info.begin + first * info.row_bytes
        start = begin - begin % mmap.PAGESIZE
        length = begin + count * info.row_bytes - start
        if length > 0:
            self._map.madvise(mmap.MADV_DONTNEED, start, length)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # a row view is still alive (an error unwound through a conversion); it frees the map


class Checkpoint:
    """config.json plus every tensor of the safetensors shards, found through the index file
    (or the single `model.safetensors`). `tensors` is ordered shard by shard (shards sorted by
    name, as llama.cpp's converter visits them) and by position within each shard, so reading
    it in order reads each file front to back."""

    def __init__(self, hf_dir: str | os.PathLike):
        self.dir = Path(hf_dir)
        if not self.dir.exists():
            raise ConvertError(self.dir, "does not exist")
        if not self.dir.is_dir():
            raise ConvertError(self.dir, "is not a directory")
        self.config_path = self.dir / CONFIG_FILE
        self.config = read_json(self.config_path)
        self._files: dict[Path, SafetensorsFile] = {}
        try:
            self.tensors = self._index_tensors()
        except BaseException:
            self.close()
            raise

    def _index_tensors(self) -> dict[str, TensorInfo]:
        index_path = self.dir / INDEX_FILE
        index = read_json(index_path, required=False)
        if index is None:
            single = self.dir / SINGLE_FILE
            if not single.is_file():
                raise ConvertError(self.dir, f"neither {INDEX_FILE} nor {SINGLE_FILE} is here")
            return self._open(single).tensors

        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConvertError(index_path, "'weight_map' is not an object of tensor name -> shard file")
        tensors = {}
        for shard_name in sorted(set(weight_map.values())):
            if Path(shard_name).name != shard_name:
                raise ConvertError(
                    index_path, f"'weight_map' names {shard_name!r}, not a file name in {self.dir}"
                )
            shard_path = self.dir / shard_name
            if not shard_path.is_file():
                raise ConvertError(shard_path, f"missing (named in {INDEX_FILE} 'weight_map')")
            shard = self._open(shard_path)
            for name, info in shard.tensors.items():
                if weight_map.get(name) != shard_name:
                    raise ConvertError(
                        shard_path, f"tensor {name!r} is not mapped to this file by {INDEX_FILE}"
                    )
                tensors[name] = info
        for name, shard_name in weight_map.items():
            if name not in tensors:
                raise ConvertError(
                    self.dir / shard_name, f"tensor {name!r} (named in {INDEX_FILE}) is not in this file"
                )
        return tensors

    def _open(self, path: Path) -> SafetensorsFile:
        shard = SafetensorsFile(path)
        self._files[path] = shard
        return shard

    def rows(self, info: TensorInfo, first: int, count: int) -> np.ndarray:
        return self._files[info.path].rows(info, first, count)

    def release(self, info: TensorInfo, first: int, count: int) -> None:
        self._files[info.path].release(info, first, count)

    def close(self) -> None:
        for shard in self._files.values():
            shard.close()
        self._files.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
