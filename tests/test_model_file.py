"""pyphi.model_file on small phi3 GGUFs written with gguf-py's GGUFWriter: a good file loads and
runs; a missing key or tensor, a wrong shape or type gives one ModelFileError line naming the
file and the key or tensor."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from pyphi.gguf_reader import GGUFError
from pyphi.model import Model
from pyphi.model_file import ModelFile, ModelFileError

N_VOCAB, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_ROT = 96, 64, 4, 2, 96, 2, 12
HEAD_DIM = N_EMBD // N_HEAD
QKV = (N_HEAD + 2 * N_HEAD_KV) * HEAD_DIM

KEYS = {
    "phi3.context_length": (gguf.GGUFValueType.UINT32, 8192),
    "phi3.embedding_length": (gguf.GGUFValueType.UINT32, N_EMBD),
    "phi3.feed_forward_length": (gguf.GGUFValueType.UINT32, N_FF),
    "phi3.block_count": (gguf.GGUFValueType.UINT32, N_LAYER),
    "phi3.attention.head_count": (gguf.GGUFValueType.UINT32, N_HEAD),
    "phi3.attention.head_count_kv": (gguf.GGUFValueType.UINT32, N_HEAD_KV),
    "phi3.attention.layer_norm_rms_epsilon": (gguf.GGUFValueType.FLOAT32, 1e-5),
    "phi3.rope.dimension_count": (gguf.GGUFValueType.UINT32, N_ROT),
    "phi3.rope.freq_base": (gguf.GGUFValueType.FLOAT32, 10000.0),
    "phi3.rope.scaling.original_context_length": (gguf.GGUFValueType.UINT32, 4096),
    "phi3.rope.scaling.attn_factor": (gguf.GGUFValueType.FLOAT32, 1.2),
}


def tensors() -> dict[str, np.ndarray]:
    """numpy shapes (rows, row length): ggml's shapes reversed."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    out = {"token_embd.weight": w(N_VOCAB, N_EMBD), "output_norm.weight": np.ones(N_EMBD, np.float32),
           "rope_factors_long.weight": np.linspace(1, 4, N_ROT // 2, dtype=np.float32),
           "rope_factors_short.weight": np.ones(N_ROT // 2, np.float32)}
    for i in range(N_LAYER):
        out |= {f"blk.{i}.attn_norm.weight": np.ones(N_EMBD, np.float32),
                f"blk.{i}.attn_qkv.weight": w(QKV, N_EMBD),
                f"blk.{i}.attn_output.weight": w(N_EMBD, N_HEAD * HEAD_DIM),
                f"blk.{i}.ffn_norm.weight": np.ones(N_EMBD, np.float32),
                f"blk.{i}.ffn_up.weight": w(2 * N_FF, N_EMBD),
                f"blk.{i}.ffn_down.weight": w(N_EMBD, N_FF)}
    return out


def write(path, keys=None, tensors_=None, arch="phi3", raw_types=None):
    """A GGUF of `keys` {name: (type, value)} and `tensors_` {name: float32 array}; raw_types
    {name: (ggml type, raw uint8 data)} stores those tensors as given."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, (vtype, value) in (KEYS if keys is None else keys).items():
        writer.add_key_value(key, value, vtype)
    for name, array in (tensors() if tensors_ is None else tensors_).items():
        if raw_types and name in raw_types:
            qtype, raw = raw_types[name]
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_good_file_loads_and_runs(tmp_path):
    path = write(tmp_path / "good.gguf")
    with Model(path) as model:  # the default n_ctx, 4096, or the model's context if shorter
        assert model.n_ctx == 4096
    with Model(write(tmp_path / "short.gguf", keys=KEYS | {"phi3.context_length": (gguf.GGUFValueType.UINT32, 1000)})) as model:
        assert model.n_ctx == 1000
    with Model(path, n_ctx=64, kv_type="f32") as model:
        h = model.hparams
        assert (h.n_vocab, h.n_embd, h.n_layer, h.head_dim, h.n_rot, h.n_ctx_orig) == (N_VOCAB, N_EMBD, N_LAYER, 16, N_ROT, 4096)
        assert h.has_longrope and h.tied_output and h.rope_attn_factor == pytest.approx(1.2)
        logits = model.eval([1, 2, 3], logits="all")
    assert logits.shape == (3, N_VOCAB) and np.isfinite(logits).all()


def without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


def expect_error(path, message: str):
    with pytest.raises(ModelFileError) as info:
        Model(path, n_ctx=64)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert message in text, text
    assert isinstance(info.value, GGUFError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["phi3.block_count", "phi3.embedding_length", "phi3.context_length",
                                 "phi3.attention.layer_norm_rms_epsilon"])
def test_missing_key(tmp_path, key):
    expect_error(write(tmp_path / "f.gguf", keys=without(KEYS, key)), f"key {key!r} is missing")


def test_key_of_wrong_type(tmp_path):
    keys = KEYS | {"phi3.block_count": (gguf.GGUFValueType.STRING, "2")}
    expect_error(write(tmp_path / "f.gguf", keys=keys), "key 'phi3.block_count' has type STRING, expected an integer")


def test_heads_that_do_not_divide(tmp_path):
    keys = KEYS | {"phi3.attention.head_count_kv": (gguf.GGUFValueType.UINT32, 3)}
    expect_error(write(tmp_path / "f.gguf", keys=keys), "'phi3.attention.head_count' 4 is not a multiple of")


def test_other_architecture(tmp_path):
    expect_error(write(tmp_path / "f.gguf", arch="gemma"), "key 'general.architecture' is 'gemma'; pyphi runs phi3, llama")


@pytest.mark.parametrize("name", ["blk.1.ffn_down.weight", "token_embd.weight", "output_norm.weight"])
def test_missing_tensor(tmp_path, name):
    expect_error(write(tmp_path / "f.gguf", tensors_=without(tensors(), name)), f"tensor {name!r} is missing")


def test_wrong_shape(tmp_path):
    ts = tensors() | {"blk.0.attn_qkv.weight": np.zeros((QKV - 16, N_EMBD), np.float32)}
    expect_error(write(tmp_path / "f.gguf", tensors_=ts),
                 f"tensor 'blk.0.attn_qkv.weight' has shape [{N_EMBD}, {QKV - 16}], expected [{N_EMBD}, {QKV}]")


def test_wrong_factor_length(tmp_path):
    ts = tensors() | {"rope_factors_long.weight": np.ones(N_ROT, np.float32)}
    expect_error(write(tmp_path / "f.gguf", tensors_=ts),
                 f"tensor 'rope_factors_long.weight' has shape [{N_ROT}], expected [{N_ROT // 2}]")


def test_type_we_do_not_compute(tmp_path):
    name = "blk.1.attn_output.weight"
    rows = tensors()[name]
    raw = np.zeros((rows.shape[0], rows.shape[1] // 32 * 18), np.uint8)  # IQ4_NL: 18 bytes per 32
    expect_error(write(tmp_path / "f.gguf", raw_types={name: (gguf.GGMLQuantizationType.IQ4_NL, raw)}),
                 f"tensor {name!r} has type IQ4_NL, which pyphi does not compute")


def test_norm_not_f32(tmp_path):
    ts = tensors() | {"blk.0.ffn_norm.weight": np.ones(N_EMBD, np.float16)}
    expect_error(write(tmp_path / "f.gguf", tensors_=ts), "tensor 'blk.0.ffn_norm.weight' has type F16, expected F32")


def test_untied_head_and_no_longrope(tmp_path):
    """An output.weight is used when present; without factor tensors there is no switching."""
    ts = without(without(tensors(), "rope_factors_long.weight"), "rope_factors_short.weight")
    ts["output.weight"] = np.zeros((N_VOCAB, N_EMBD), np.float32)
    with ModelFile(write(tmp_path / "f.gguf", tensors_=ts)) as mf:
        assert not mf.hparams.tied_output and not mf.hparams.has_longrope
    with Model(tmp_path / "f.gguf", n_ctx=64) as model:
        np.testing.assert_array_equal(model.eval([5, 6]), np.zeros(N_VOCAB, np.float32))
