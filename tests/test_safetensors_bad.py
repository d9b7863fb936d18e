"""Crafted bad safetensors files, index files and JSON configs, made here by code: each must be
refused by convert/checkpoint.py with a one-line ConvertError naming the file, the tensor or key,
and the byte offset where there is one, and never crash or read outside the file.

The reference for what is malformed is the safetensors library itself (`safe_open`, the Rust
validator Hugging Face loads checkpoints with): every crafted file that breaks the format is
refused by it too, and the valid base file and the misaligned one are accepted by both.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors import safe_open

from pyphi.convert.checkpoint import MAX_HEADER_BYTES, Checkpoint, SafetensorsFile, read_json
from pyphi.convert.errors import ConvertError

# name -> (dtype, shape, bytes); BF16 values are raw bits
TENSORS = {
    "a.weight": ("BF16", [2, 3], np.arange(6, dtype="<u2").tobytes()),
    "b.bias": ("F32", [4], np.array([1.5, -2, 0, 3], "<f4").tobytes()),
    "c.norm": ("F16", [3], np.array([0.5, 1, 2], "<f2").tobytes()),
}


def _file(header: dict | bytes, data: bytes, pad: bool = True) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if pad:  # the safetensors writer pads the header with spaces to 8 bytes
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def _header(tensors=TENSORS, metadata=None) -> tuple[dict, bytes]:
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    return header, data


def _valid() -> bytes:
    return _file(*_header(metadata={"format": "pt"}))


def _entry(header: dict, name: str, **changes) -> dict:
    return {**header, name: {**header[name], **changes}}


def _bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, text the error must contain)."""
    header, data = _header()
    files = {
        "header length huge": (struct.pack("<Q", 2**64 - 1) + b"{}", "over the"),
        "header length over the limit": (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "over the"),
        "header length past the end": (struct.pack("<Q", 1000) + b"{}", "truncated"),
        "header not UTF-8": (_file(b'{"\xff": 1}', b""), "UTF-8"),
        "header not JSON": (_file(b"{not json", b""), "not valid JSON"),
        "header a list": (_file(b"[1, 2]", b""), "not a JSON object"),
        "header nested deeply": (_file(b"[" * 100_000 + b"]" * 100_000, b""), "nested too deeply"),
        "header integer of 5000 digits": (_file(b'{"x": ' + b"9" * 5000 + b"}", b""), "not valid JSON"),
        "duplicate tensor": (_file(json.dumps(header).encode()[:-1] + b', "a.weight": '
                                   + json.dumps(header["a.weight"]).encode() + b"}", data), "appears twice"),
        "duplicate field": (_file(b'{"a.weight": {"dtype": "BF16", "dtype": "F32", "shape": [2, 3], '
                                  b'"data_offsets": [0, 12]}}', data[:12]), "appears twice"),
        "unknown dtype": (_file(_entry(header, "b.bias", dtype="Q4"), data), "'dtype' is 'Q4'"),
        "dtype not a string": (_file(_entry(header, "b.bias", dtype=5), data), "'dtype' is 5"),
        "dtype missing": (_file({**header, "b.bias": {"shape": [4], "data_offsets": [12, 28]}}, data), "'dtype'"),
        "entry not an object": (_file({**header, "b.bias": [1]}, data), "not an object"),
        "negative dim": (_file(_entry(header, "a.weight", shape=[-2, -3]), data), "non-negative"),
        "overflowing dims": (_file(_entry(header, "a.weight", shape=[2**62, 2**62, 2**62]), data), "do not span"),
        "dim a float": (_file(_entry(header, "a.weight", shape=[2.0, 3]), data), "non-negative"),
        "dim a bool": (_file(_entry(header, "a.weight", shape=[True, 6]), data), "non-negative"),
        "shape a string": (_file(_entry(header, "a.weight", shape="2x3"), data), "'shape'"),
        "offsets reversed": (_file(_entry(header, "a.weight", data_offsets=[12, 0]), data), "do not span"),
        "offsets negative": (_file(_entry(header, "a.weight", data_offsets=[-12, 0]), data), "do not span"),
        "offsets of three": (_file(_entry(header, "a.weight", data_offsets=[0, 6, 12]), data), "[begin, end]"),
        "offsets past the end": (_file(_entry(header, "c.norm", data_offsets=[2**40, 2**40 + 6]), data), "past the end"),
        "offsets overlap": (_file(_entry(header, "b.bias", data_offsets=[8, 24]), data), "overlaps"),
        "offsets leave a gap": (_file(_entry(header, "c.norm", data_offsets=[30, 36]), data + b"\0\0"), "gap"),
        "bytes after the last tensor": (_file(header, data + b"\0" * 8), "belong to none"),
        "size not the shape's": (_file(_entry(header, "a.weight", shape=[2, 4]), data), "do not span"),
        "metadata not strings": (_file({**header, "__metadata__": {"format": 1}}, data), "'__metadata__'"),
        "metadata a list": (_file({**header, "__metadata__": ["pt"]}, data), "'__metadata__'"),
    }
    return files


BAD_FILES = _bad_files()
# Files the reference reads but we refuse: serde_json nests deeper than Python's recursion limit
# and keeps the last of two equal keys (two readers could then disagree on the tensor).
STRICTER_THAN_REFERENCE = ("header nested deeply", "duplicate tensor", "duplicate field")


def _refused_by_reference(path) -> bool:
    try:
        with safe_open(path, "np") as f:
            for name in f.keys():
                f.get_slice(name)
    except Exception:  # safetensors_rust.SafetensorError, or OSError for a short file
        return True
    return False


def _assert_refused(path, *needles) -> str:
    with pytest.raises(ConvertError) as caught:
        SafetensorsFile(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_the_base_file_is_valid_for_both_readers(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_valid())
    assert not _refused_by_reference(path)
    st = SafetensorsFile(path)
    try:
        assert list(st.tensors) == list(TENSORS)
        for name, (dtype, shape, payload) in TENSORS.items():
            info = st.tensors[name]
            assert (info.dtype, list(info.shape)) == (dtype, shape)
            rows = st.rows(info, 0, info.n_rows)
            assert rows.tobytes() == payload
    finally:
        st.close()


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_crafted_bad_file_is_refused(case, tmp_path):
    content, needle = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    message = _assert_refused(path, needle)
    if "tensor '" in message or "header" in message or "offset" in message:
        assert "offset" in message or "'__metadata__'" in message, message
    if case not in STRICTER_THAN_REFERENCE:
        assert _refused_by_reference(path), case


def test_every_truncation_is_refused(tmp_path):
    """Every prefix of a valid file, so every section boundary (inside the length, the JSON, each
    tensor's data) and every byte between them."""
    content = _valid()
    path = tmp_path / "cut.safetensors"
    for size in range(len(content)):
        path.write_bytes(content[:size])
        _assert_refused(path)
        assert _refused_by_reference(path), size


def test_misaligned_tensor_data_is_read_through_an_aligned_copy(tmp_path):
    """The format lets an F32 tensor start at an odd offset (after a 3-value F16 one, and an
    unpadded header); the reader hands the C core an aligned copy of the same bytes."""
    tensors = {"c.norm": TENSORS["c.norm"], "b.bias": TENSORS["b.bias"], "a.weight": TENSORS["a.weight"]}
    header, data = _header(tensors)
    raw = json.dumps(header).encode()
    raw += b" " * ((1 - len(raw)) % 8)  # header length = 1 mod 8: the data section starts odd
    path = tmp_path / "odd.safetensors"
    path.write_bytes(_file(raw, data, pad=False))
    assert not _refused_by_reference(path)
    st = SafetensorsFile(path)
    try:
        for name, (_, _, payload) in tensors.items():
            info = st.tensors[name]
            assert info.begin % 2 == 1
            rows = st.rows(info, 0, info.n_rows)
            assert rows.tobytes() == payload
            assert rows.ctypes.data % 4 == 0
        with safe_open(path, "np") as f:
            np.testing.assert_array_equal(f.get_tensor("b.bias"), np.frombuffer(TENSORS["b.bias"][2], "<f4"))
    finally:
        st.close()


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"a": 1, "a": 2}', "'a' appears twice"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"n": ' + "1" * 5000 + "}", "not valid JSON"),
        ("[1]", "expected a JSON object"),
        ('{"a": 1', "line 1 column"),
    ],
)
def test_bad_json_configs_are_refused(tmp_path, text, needle):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConvertError, match=needle) as caught:
        read_json(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_bad_json_bytes_are_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConvertError, match="cannot read"):
        read_json(path)


@pytest.mark.parametrize(
    "index, needle",
    [
        ({"weight_map": {"a.weight": "../x.safetensors"}}, "not a file name"),
        ({"weight_map": {"a.weight": "/etc/passwd"}}, "not a file name"),
        ({"weight_map": {"a.weight": 3}}, "'weight_map'"),
        ({"weight_map": []}, "'weight_map'"),
        ({"weight_map": {**{name: "model.safetensors" for name in TENSORS}, "zzz": "model.safetensors"}}, "'zzz'"),
        ({"weight_map": {"a.weight": "other.safetensors"}}, "missing"),
    ],
)
def test_bad_index_files_are_refused(tmp_path, index, needle):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(_valid())
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConvertError, match=needle) as caught:
        Checkpoint(tmp_path)
    assert "\n" not in str(caught.value)
