"""Tests of pyphi.gguf_reader: round trips through gguf-py's writer, agreement with its reader,
a crafted corpus of malformed files, and the open time of a Phi-4-mini-sized vocabulary.

Good files come from `gguf.GGUFWriter` (the independent reference writer). Bad files are built
byte by byte here, because the reference writer refuses to write most of them.
"""

import os
import struct

import gguf
import numpy as np
import pytest

from pyphi.gguf_format import GGML_BLOCK_SIZES, NUMPY_DTYPES, ValueType
from pyphi.gguf_reader import GGUFError, GGUFFile, TensorInfo

rng = np.random.default_rng(0)

# ---- good files, written by gguf.GGUFWriter --------------------------------------------------

SCALARS = {
    "t.u8": (255, ValueType.UINT8),
    "t.i8": (-128, ValueType.INT8),
    "t.u16": (65535, ValueType.UINT16),
    "t.i16": (-32768, ValueType.INT16),
    "t.u32": (4294967295, ValueType.UINT32),
    "t.i32": (-2147483648, ValueType.INT32),
    "t.f32": (0.15625, ValueType.FLOAT32),
    "t.bool": (True, ValueType.BOOL),
    "t.str": ("héllo wörld ✓ 你好", ValueType.STRING),
    "t.u64": (2**64 - 1, ValueType.UINT64),
    "t.i64": (-(2**63), ValueType.INT64),
    "t.f64": (-1.0e300, ValueType.FLOAT64),
}

ARRAYS = {
    "a.u8": ([0, 1, 255], ValueType.UINT8),
    "a.i8": ([-128, 0, 127], ValueType.INT8),
    "a.u16": ([0, 65535], ValueType.UINT16),
    "a.i16": ([-32768, 32767], ValueType.INT16),
    "a.u32": ([0, 4294967295], ValueType.UINT32),
    "a.i32": ([-2147483648, 7, 2147483647], ValueType.INT32),
    "a.f32": ([0.5, -2.25, 1e30], ValueType.FLOAT32),
    "a.bool": ([True, False, True], ValueType.BOOL),
    "a.str": (["a", "", "Ġthe", "✓✓", "\n"], ValueType.STRING),
    "a.u64": ([0, 2**64 - 1], ValueType.UINT64),
    "a.i64": ([-(2**63), 2**63 - 1], ValueType.INT64),
    "a.f64": ([1e-300, -0.0, 3.5], ValueType.FLOAT64),
}

NESTED = {
    "n.ints": [[1, 2, 3], [4], [5, 6]],
    "n.strs": [["x", "yz"], ["✓"]],
}


def _tensors():
    """(name, array given to GGUFWriter, raw_dtype, expected ggml shape, expected view) each."""
    f32 = rng.standard_normal((3, 8)).astype(np.float32)
    f16 = rng.standard_normal((2, 3, 4)).astype(np.float16)
    bf16 = rng.integers(0, 2**16, (5, 6), dtype=np.uint16)
    q8 = rng.integers(0, 256, (4, 2 * 34), dtype=np.uint8)  # 4 rows of 64 values
    q4 = rng.integers(0, 256, (3, 18), dtype=np.uint8)  # 3 rows of 32 values
    q4k = rng.integers(0, 256, (2, 144), dtype=np.uint8)  # 2 rows of 256 values
    i32 = rng.integers(-(2**31), 2**31, (7,), dtype=np.int32)
    BF16, Q8_0, Q4_0, Q4_K = (
        gguf.GGMLQuantizationType[t] for t in ("BF16", "Q8_0", "Q4_0", "Q4_K")
    )
    return [
        ("w.f32", f32, None, (8, 3), f32),
        ("w.f16", f16, None, (4, 3, 2), f16),
        ("w.bf16", bf16, BF16, (6, 5), bf16),
        ("w.q8_0", q8, Q8_0, (64, 4), q8),
        ("w.q4_0", q4, Q4_0, (32, 3), q4),
        ("w.q4_k", q4k, Q4_K, (256, 2), q4k),
        ("w.i32", i32, None, (7,), i32),
    ]


def _write_reference(path, tensors, alignment=None):
    w = gguf.GGUFWriter(str(path), "phi3")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (value, vtype) in SCALARS.items():
        w.add_key_value(key, value, vtype)
    for key, (values, etype) in ARRAYS.items():
        w.add_key_value(key, values, ValueType.ARRAY, sub_type=etype)
    for key, values in NESTED.items():
        w.add_key_value(key, values, ValueType.ARRAY)
    for name, array, raw_dtype, _, _ in tensors:
        w.add_tensor(name, array, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "reference.gguf"
    tensors = _tensors()
    _write_reference(path, tensors)
    return path, tensors


def test_scalars_round_trip(reference):
    with GGUFFile(reference[0]) as f:
        for key, (value, vtype) in SCALARS.items():
            assert f.value_type(key) is vtype and f.element_type(key) is None
            got = f.metadata[key]
            assert type(got) is type(value) and (
                got == value if vtype is not ValueType.FLOAT32 else got == np.float32(value)
            ), key
        assert f.require("general.architecture", ValueType.STRING) == "phi3"


def test_arrays_round_trip(reference):
    with GGUFFile(reference[0]) as f:
        for key, (values, etype) in ARRAYS.items():
            assert f.value_type(key) is ValueType.ARRAY and f.element_type(key) is etype
            got = f.require(key, ValueType.ARRAY, etype)
            if etype is ValueType.STRING:
                assert got == values
            else:
                expected_dtype = bool if etype is ValueType.BOOL else np.dtype(NUMPY_DTYPES[etype])
                assert isinstance(got, np.ndarray) and got.dtype == expected_dtype, key
                np.testing.assert_array_equal(got, np.array(values, dtype=got.dtype))
                assert got.flags.owndata  # a copy: metadata outlives the mapping


def test_string_arrays_index_slice_and_outlive_the_mapping(reference):
    """String arrays are kept as their bytes and decoded on access (StringArray), so they must
    behave as the list of str they stand for, after the file is closed too."""
    f = GGUFFile(reference[0])
    for key, (values, etype) in ARRAYS.items():
        if etype is not ValueType.STRING:
            continue
        got = f.metadata[key]
        f.close()
        assert len(got) == len(values) and list(got) == values
        assert [got[i] for i in range(-len(values), len(values))] == values + values
        assert got[1:] == values[1:] and got[::-2] == values[::-2]
        assert got == tuple(values) and got != values[:-1] and got != values[:-1] + ["?"]
        with pytest.raises(IndexError):
            got[len(values)]


def test_nested_arrays_round_trip(reference):
    with GGUFFile(reference[0]) as f:
        assert f.element_type("n.ints") is ValueType.ARRAY
        assert [a.tolist() for a in f.metadata["n.ints"]] == NESTED["n.ints"]
        assert f.metadata["n.strs"] == NESTED["n.strs"]


def test_tensors_round_trip(reference):
    path, tensors = reference
    size = path.stat().st_size
    with GGUFFile(path) as f:
        assert list(f.tensors) == [t[0] for t in tensors]
        assert f.alignment == 32 and f.data_offset % 32 == 0
        for name, _, raw_dtype, shape, expected in tensors:
            info = f.tensors[name]
            assert isinstance(info, TensorInfo) and info.name == name and info.shape == shape
            if raw_dtype is not None:
                assert info.type == int(raw_dtype)
            assert info.offset % 32 == 0 and info.offset + info.nbytes <= size
            view = f.tensor_data(name)
            assert view.dtype == expected.dtype and view.shape == expected.shape, name
            assert view.tobytes() == expected.tobytes(), name
            assert not view.flags.writeable and not view.flags.owndata  # a view of the mapping
            assert info.nbytes == expected.nbytes


def test_gguf_py_reader_agrees(reference):
    path, _ = reference
    theirs = gguf.GGUFReader(str(path))
    with GGUFFile(path) as f:
        for key, field in theirs.fields.items():
            if key.startswith("GGUF."):  # gguf-py's pseudo-fields for the header
                continue
            assert int(field.types[0]) == f.value_type(key), key
            if key in NESTED:  # gguf-py flattens nested arrays (its own FIXME)
                continue
            ours = f.metadata[key]
            expected = ours.tolist() if isinstance(ours, np.ndarray) else ours
            assert field.contents() == expected, key
        assert set(f.metadata) == {k for k in theirs.fields if not k.startswith("GGUF.")}
        assert len(theirs.tensors) == len(f.tensors)
        for t in theirs.tensors:
            info = f.tensors[t.name]
            assert (info.type, info.shape, info.offset, info.nbytes) == (
                int(t.tensor_type),
                tuple(int(n) for n in t.shape),
                t.data_offset,
                t.n_bytes,
            )
            assert f.tensor_data(t.name).tobytes() == t.data.tobytes()


def test_block_sizes_agree_with_gguf_py():
    for type_id, sizes in GGML_BLOCK_SIZES.items():
        theirs = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)]
        if type_id == 9:
            # gguf-py 0.19.0 still says Q8_1 is 40 bytes (float d, s); ggml-common.h has
            # static_assert(sizeof(block_q8_1) == 2*sizeof(ggml_half) + QK8_1), i.e. 36.
            assert (sizes, theirs) == ((32, 36), (32, 40))
        else:
            assert sizes == theirs, type_id


def test_custom_alignment(tmp_path):
    path = tmp_path / "aligned.gguf"
    tensors = _tensors()
    _write_reference(path, tensors, alignment=64)
    with GGUFFile(path) as f:
        assert f.alignment == 64 and f.data_offset % 64 == 0
        assert all(info.offset % 64 == 0 for info in f.tensors.values())
        assert f.tensor_data("w.q4_k").tobytes() == tensors[5][1].tobytes()


def test_version_2_reads_like_version_3(reference, tmp_path):
    data = bytearray(reference[0].read_bytes())
    data[4:8] = struct.pack("<I", 2)
    path = tmp_path / "v2.gguf"
    path.write_bytes(bytes(data))
    with GGUFFile(path) as v2, GGUFFile(reference[0]) as v3:
        assert (v2.version, v3.version) == (2, 3)
        assert v2.tensors == v3.tensors and v2.metadata.keys() == v3.metadata.keys()


def test_helpers(reference):
    path = reference[0]
    with GGUFFile(path) as f:
        assert f.get("t.u8") == 255 and f.get("no.such.key", 7) == 7
        with pytest.raises(GGUFError, match=r"key 'no\.such\.key' is missing") as e:
            f.require("no.such.key", ValueType.UINT32)
        assert str(path) in str(e.value)
        with pytest.raises(
            GGUFError, match=r"key 't\.u8' at offset \d+ has type UINT8, expected UINT32"
        ):
            f.require("t.u8", ValueType.UINT32)
        with pytest.raises(GGUFError, match="has type ARRAY of INT32, expected ARRAY of STRING"):
            f.require("a.i32", ValueType.ARRAY, ValueType.STRING)
        with pytest.raises(GGUFError, match=r"tensor 'nope' is missing"):
            f.tensor_data("nope")
        view = f.tensor_data("w.f32")
    # close() with a live view: the view stays valid, the file refuses new ones.
    assert view.shape == (3, 8) and np.isfinite(view).all()
    with pytest.raises(ValueError, match="closed"):
        f.tensor_data("w.f32")
    f.close()


# ---- bad files, crafted byte by byte ---------------------------------------------------------

U32, U64, STR, ARR = ValueType.UINT32, ValueType.UINT64, ValueType.STRING, ValueType.ARRAY
F32, Q4_0 = 0, 2


def _str(s):
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def _kv(key, vtype, payload):
    return _str(key) + struct.pack("<I", vtype) + payload


def _info(name, dims, ggml_type=F32, offset=0):
    return (
        _str(name)
        + struct.pack(f"<I{len(dims)}Q", len(dims), *dims)
        + struct.pack("<IQ", ggml_type, offset)
    )


def _gguf(
    kvs=(), infos=(), data=b"", n_kv=None, n_tensors=None, version=3, magic=b"GGUF", align=32
):
    n_kv = len(kvs) if n_kv is None else n_kv
    n_tensors = len(infos) if n_tensors is None else n_tensors
    head = struct.pack("<4sIQQ", magic, version, n_tensors, n_kv) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % align) + data


ARCH = _kv("general.architecture", STR, _str("phi3"))
GOOD_INFO = _info("blk.0.w", [4])
GOOD_DATA = struct.pack("<4f", 1, 2, 3, 4)
HUGE = 2**64 - 1

# (case id, file bytes, fragments the message must contain besides the file name)
BAD_FILES = [
    ("empty", b"", ["shorter than a GGUF header"]),
    ("short", b"GGUF\x03\x00", ["shorter than a GGUF header"]),
    ("bad magic", _gguf(magic=b"GGML"), ["magic b'GGML'", "offset 0"]),
    ("version 1", _gguf(version=1), ["version 1", "offset 4"]),
    ("version 4", _gguf(version=4), ["version 4"]),
    ("big-endian", _gguf(version=0x03000000), ["big-endian"]),
    ("huge n_kv", _gguf([ARCH], n_kv=HUGE), [f"n_kv {HUGE}", "offset 16"]),
    ("huge n_tensors", _gguf([ARCH], n_tensors=HUGE), [f"n_tensors {HUGE}", "offset 8"]),
    ("n_kv one too many", _gguf([ARCH], n_kv=2, align=1), ["key #1", "runs past the end"]),
    ("huge key length", _gguf([struct.pack("<Q", HUGE) + b"k" * 16]), ["key #0", "offset 24"]),
    ("huge string", _gguf([_kv("k.s", STR, struct.pack("<Q", HUGE))]), ["key 'k.s'", str(HUGE)]),
    (
        "huge string array",
        _gguf([_kv("k.a", ARR, struct.pack("<IQ", STR, 2**62))]),
        ["key 'k.a'", f"array length {2**62}"],
    ),
    (
        "huge number array",
        _gguf([_kv("k.a", ARR, struct.pack("<IQ", ValueType.FLOAT64, HUGE))]),
        ["key 'k.a'", "array length"],
    ),
    (
        "huge nested array",
        _gguf([_kv("k.a", ARR, struct.pack("<IQ", ARR, HUGE))]),
        ["key 'k.a'", "array length"],
    ),
    (
        "string in array runs past end",
        _gguf([_kv("k.a", ARR, struct.pack("<IQ", STR, 2) + _str("ok") + struct.pack("<Q", 99))]),
        ["key 'k.a'", "string 1"],
    ),
    ("bad value type", _gguf([_kv("k.t", 13, b"\0" * 8)]), ["key 'k.t'", "value type 13"]),
    (
        "bad element type",
        _gguf([_kv("k.t", ARR, struct.pack("<IQ", 2**32 - 1, 1))]),
        ["key 'k.t'", "array element type 4294967295"],
    ),
    (
        "nesting too deep",
        _gguf([_kv("k.n", ARR, struct.pack("<IQ", ARR, 1) * 20 + struct.pack("<IQ", U32, 0))]),
        ["key 'k.n'", "nested deeper"],
    ),
    ("duplicate key", _gguf([ARCH, ARCH]), ["key 'general.architecture'", "duplicate key"]),
    ("invalid UTF-8 key", _gguf([_kv(b"bad\xff", U32, b"\0" * 4)]), ["key #0", "not valid UTF-8"]),
    (
        "invalid UTF-8 value",
        _gguf([_kv("k.s", STR, _str(b"\xc3\x28"))]),
        ["key 'k.s'", "not valid UTF-8"],
    ),
    (
        "invalid UTF-8 in string array",
        _gguf([_kv("k.a", ARR, struct.pack("<IQ", STR, 2) + _str("ok") + _str(b"\xed\xa0\x80"))]),
        ["key 'k.a'", "string 1", "not valid UTF-8"],
    ),
    (
        "alignment not a power of two",
        _gguf([_kv("general.alignment", U32, struct.pack("<I", 48))]),
        ["'general.alignment'", "value 48 is not a power of two"],
    ),
    (
        "alignment zero",
        _gguf([_kv("general.alignment", U32, struct.pack("<I", 0))]),
        ["'general.alignment'", "value 0 is not a power of two"],
    ),
    (
        "alignment of the wrong type",
        _gguf([_kv("general.alignment", U64, struct.pack("<Q", 32))]),
        ["'general.alignment'", "has type UINT64, expected UINT32"],
    ),
    (
        "duplicate tensor",
        _gguf([ARCH], [GOOD_INFO, _info("blk.0.w", [4], offset=32)], GOOD_DATA * 3),
        ["tensor 'blk.0.w'", "duplicate tensor"],
    ),
    ("n_dims 0", _gguf([ARCH], [_info("t0", [])], GOOD_DATA), ["tensor 't0'", "n_dims 0"]),
    ("n_dims 5", _gguf([ARCH], [_info("t5", [1] * 5)], GOOD_DATA), ["tensor 't5'", "n_dims 5"]),
    ("dim 0", _gguf([ARCH], [_info("z", [4, 0])], GOOD_DATA), ["tensor 'z'", "dim 1 = 0"]),
    (
        "dim >= 2^63",
        _gguf([ARCH], [_info("neg", [2**63])], GOOD_DATA),
        ["tensor 'neg'", f"dim 0 = {2**63}"],
    ),
    ("dim 2^64-1", _gguf([ARCH], [_info("neg", [4, HUGE])], GOOD_DATA), ["tensor 'neg'", "dim 1"]),
    (
        "element count overflow",
        _gguf([ARCH], [_info("big", [2**32, 2**32])], GOOD_DATA),
        ["tensor 'big'", "over 2^63-1 elements"],
    ),
    (
        "unknown type",
        _gguf([ARCH], [_info("u", [4], ggml_type=4)], GOOD_DATA),
        ["tensor 'u'", "type 4"],
    ),
    (
        "type out of range",
        _gguf([ARCH], [_info("u", [4], ggml_type=1000)], GOOD_DATA),
        ["tensor 'u'", "type 1000"],
    ),
    (
        "row not a block multiple",
        _gguf([ARCH], [_info("q", [33], ggml_type=Q4_0)], bytes(64)),
        ["tensor 'q'", "not a multiple of the Q4_0 block size 32"],
    ),
    (
        "offset misaligned",
        _gguf([ARCH], [_info("m", [4], offset=8)], GOOD_DATA * 2),
        ["tensor 'm'", "data offset 8"],
    ),
    (
        "offset past end",
        _gguf([ARCH], [_info("p", [4], offset=2**40)], GOOD_DATA),
        ["tensor 'p'", "runs past the end"],
    ),
    (
        "offset 2^64-32",
        _gguf([ARCH], [_info("p", [4], offset=2**64 - 32)], GOOD_DATA),
        ["tensor 'p'", "runs past the end"],
    ),
    (
        "data truncated",
        _gguf([ARCH], [_info("d", [8])], GOOD_DATA),
        ["tensor 'd'", "data [offset", "32 bytes]"],
    ),
    (
        "overlapping tensors",
        _gguf([ARCH], [_info("a", [16]), _info("b", [8], offset=32)], GOOD_DATA * 4),
        ["tensor 'b'", "overlaps tensor 'a'"],
    ),
    (
        "invalid UTF-8 tensor name",
        _gguf([ARCH], [_info(b"w\x80", [4])], GOOD_DATA),
        ["tensor #0", "not valid UTF-8"],
    ),
    (
        "tensor name too long",
        _gguf([ARCH], [_info("n" * 64, [4])], GOOD_DATA),
        ["longer than 63 bytes"],
    ),
]


@pytest.mark.parametrize(
    "data, fragments", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_file_raises_gguf_error(tmp_path, data, fragments):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError) as e:
        GGUFFile(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_crafted_good_file_opens(tmp_path):
    """The builder above makes valid files, so each bad case is bad for the one stated reason."""
    empty_arrays = [_kv(f"e.{t.name}", ARR, struct.pack("<IQ", t, 0)) for t in ValueType]
    path = tmp_path / "good.gguf"
    path.write_bytes(
        _gguf(
            [ARCH, *empty_arrays],
            [GOOD_INFO, _info("q", [32], Q4_0, 32)],
            GOOD_DATA + bytes(16 + 18),
        )
    )
    with GGUFFile(path) as f:
        assert f.tensor_data("blk.0.w").tolist() == [1, 2, 3, 4]
        assert f.tensor_data("q").shape == (18,)
        assert f.metadata["e.STRING"] == [] and f.metadata["e.ARRAY"] == []
        assert (
            f.metadata["e.FLOAT32"].shape == (0,) and f.element_type("e.INT64") is ValueType.INT64
        )


def _assert_gguf_error_or_valid(path):
    try:
        with GGUFFile(path) as f:
            for name in f.tensors:
                f.tensor_data(name)
    except GGUFError as e:
        assert str(e).startswith(f"{path}: ")


def test_every_truncation_raises(reference, tmp_path):
    """Cut the reference file at every byte of the header (every section boundary and every
    point inside each field) and at random points of the tensor data."""
    data = reference[0].read_bytes()
    with GGUFFile(reference[0]) as f:
        data_end = max(info.offset + info.nbytes for info in f.tensors.values())
        header_end = f.data_offset
    cuts = list(range(header_end + 1)) + rng.integers(header_end, data_end, 200).tolist()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data)
    for cut in sorted(cuts, reverse=True):  # shrink one file rather than write hundreds
        os.truncate(path, cut)
        with pytest.raises(GGUFError) as e:
            GGUFFile(path)
        assert str(e.value).startswith(f"{path}: "), cut


def test_random_corruption_never_escapes(reference, tmp_path):
    """Random bytes overwritten in the header: the file opens or raises GGUFError, nothing else."""
    data = reference[0].read_bytes()
    with GGUFFile(reference[0]) as f:
        header_end = f.data_offset
    path = tmp_path / "fuzz.gguf"
    for _ in range(400):
        corrupt = bytearray(data)
        for at in rng.integers(0, header_end, rng.integers(1, 4)):
            corrupt[at] = rng.integers(0, 256)
        path.write_bytes(bytes(corrupt))
        _assert_gguf_error_or_valid(path)


# ---- load time of a Phi-4-mini-sized vocabulary ----------------------------------------------

N_TOKENS, N_MERGES = 200_064, 199_742


def test_opens_a_phi4_mini_sized_vocabulary_quickly(tmp_path):
    """200,064 tokens and 199,742 merges, as Phi-4-mini's tokenizer.ggml.* keys hold them.

    gguf.GGUFReader takes 9.5-15 s on such a file on the shared 2-core dev box, GGUFFile
    0.14-0.28 s; the bound is loose enough for a loaded machine and still far below the former.
    """
    tokens = [f"Ġtok{i}é" if i % 3 else f"<|t{i}|>" for i in range(N_TOKENS)]
    merges = [f"Ġ tok{i}" for i in range(N_MERGES)]
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "phi3")
    w.add_token_list(tokens)
    w.add_token_types([1] * N_TOKENS)
    w.add_token_merges(merges)
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(path) as f:  # how long this takes: bench/bench_load.py
        assert f.require("tokenizer.ggml.tokens", ValueType.ARRAY, ValueType.STRING) == tokens
        assert f.metadata["tokenizer.ggml.merges"] == merges
        assert f.metadata["tokenizer.ggml.token_type"].shape == (N_TOKENS,)
