"""Tests of pyphi-convert on random-weight Phi-4-mini checkpoints (pyphi.testing.checkpoint).

The references are independent of the converter: the expected metadata and tensor tables are
written here by hand from SPEC §5 and the tiny config; files are read back with gguf-py's
GGUFReader (the ecosystem's reference reader); the source weights are read with the
`safetensors` library and torch; quantized data is compared with gguf-py's `quants.quantize`.
Every conversion runs the installed `pyphi-convert` command.
"""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import time

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pyphi.gguf_reader import GGUFFile
from pyphi.testing import checkpoint as ckpt

OUT_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
Q = gguf.GGMLQuantizationType
WEIGHT_TYPE = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}
FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
}
V = gguf.GGUFValueType

# SPEC §7, verbatim.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] "
    "+ '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt "
    "%}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

# SPEC §5.1 for the tiny config (hidden 64, 4 heads / 2 KV, ffn 128, 2 layers, partial rotary
# 0.75 -> int(0.75 * 64) // 4 = 12 rotary dims), the rest as in the real config.
ATTN_FACTOR = math.sqrt(17 / 12)  # sqrt(1 + ln 32 / ln 4096), SPEC §1
TINY_METADATA = {
    "general.architecture": (V.STRING, "phi3"),
    "general.type": (V.STRING, "model"),
    "general.name": (V.STRING, "Phi 4 Mini Instruct"),
    "general.basename": (V.STRING, "Phi-4"),
    "general.finetune": (V.STRING, "instruct"),
    "general.size_label": (V.STRING, "mini"),
    # From the model card's front matter (R1 README.md), which the generator writes.
    "general.license": (V.STRING, "mit"),
    "general.license.link": (
        V.STRING,
        "https://huggingface.co/microsoft/Phi-4-mini-instruct/resolve/main/LICENSE",
    ),
    "general.quantization_version": (V.UINT32, 2),
    "phi3.context_length": (V.UINT32, 131072),
    "phi3.rope.scaling.original_context_length": (V.UINT32, 4096),
    "phi3.embedding_length": (V.UINT32, 64),
    "phi3.feed_forward_length": (V.UINT32, 128),
    "phi3.block_count": (V.UINT32, 2),
    "phi3.attention.head_count": (V.UINT32, 4),
    "phi3.attention.head_count_kv": (V.UINT32, 2),
    "phi3.attention.layer_norm_rms_epsilon": (V.FLOAT32, np.float32(1e-5)),
    "phi3.rope.dimension_count": (V.UINT32, 12),
    "phi3.rope.freq_base": (V.FLOAT32, np.float32(10000.0)),
    "phi3.attention.sliding_window": (V.UINT32, 262144),
    "phi3.rope.scaling.attn_factor": (V.FLOAT32, np.float32(ATTN_FACTOR)),
    "tokenizer.ggml.model": (V.STRING, "gpt2"),
    "tokenizer.ggml.pre": (V.STRING, "gpt-4o"),
    "tokenizer.ggml.bos_token_id": (V.UINT32, 199999),
    "tokenizer.ggml.eos_token_id": (V.UINT32, 199999),
    "tokenizer.ggml.unknown_token_id": (V.UINT32, 199999),
    "tokenizer.ggml.padding_token_id": (V.UINT32, 199999),
    "tokenizer.ggml.eot_token_id": (V.UINT32, 200020),
    "tokenizer.ggml.add_bos_token": (V.BOOL, False),
    "tokenizer.ggml.add_eos_token": (V.BOOL, False),
    "tokenizer.chat_template": (V.STRING, CHAT_TEMPLATE),
}
ARRAY_KEYS = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}
CARD_ARRAYS = {"general.tags": ["nlp", "code", "text-generation"], "general.languages": ["multilingual"]}

# SPEC §5.2: GGUF name -> (HF name, ggml shape) for the tiny config; qkv rows (4 + 2*2) * 16 = 128.
TINY_TENSORS = {"token_embd.weight": ("model.embed_tokens.weight", [64, 200064])}
for _i in range(2):
    TINY_TENSORS |= {
        f"blk.{_i}.attn_norm.weight": (f"model.layers.{_i}.input_layernorm.weight", [64]),
        f"blk.{_i}.attn_qkv.weight": (f"model.layers.{_i}.self_attn.qkv_proj.weight", [64, 128]),
        f"blk.{_i}.attn_output.weight": (f"model.layers.{_i}.self_attn.o_proj.weight", [64, 64]),
        f"blk.{_i}.ffn_norm.weight": (f"model.layers.{_i}.post_attention_layernorm.weight", [64]),
        f"blk.{_i}.ffn_up.weight": (f"model.layers.{_i}.mlp.gate_up_proj.weight", [64, 256]),
        f"blk.{_i}.ffn_down.weight": (f"model.layers.{_i}.mlp.down_proj.weight", [128, 64]),
    }
TINY_TENSORS["output_norm.weight"] = ("model.norm.weight", [64])
ROPE_TENSORS = {"rope_factors_long.weight": "long_factor", "rope_factors_short.weight": "short_factor"}


# ---- helpers ---------------------------------------------------------------------------------


def pyphi_convert(*args):
    exe = shutil.which("pyphi-convert")
    assert exe, "pyphi-convert is not on PATH: install the package"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600, check=False)


def convert_ok(hf_dir, out, out_type, *extra):
    proc = pyphi_convert(hf_dir, "-o", out, "--type", out_type, "--no-progress", *extra)
    assert proc.returncode == 0, proc.stderr
    return out


class _PlainArrays:
    """numpy, except that `memmap` gives a plain ndarray view of the same mapped bytes. gguf-py's
    GGUFReader slices its memmap once per string of the 400k in the vocabulary and merges, and
    np.memmap's per-slice bookkeeping is half of its 10 s open time; parsing is unchanged."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def memmap(*args, **kwargs):
        return np.memmap(*args, **kwargs).view(np.ndarray)


def open_gguf(path) -> gguf.GGUFReader:
    original = gguf.gguf_reader.np
    gguf.gguf_reader.np = _PlainArrays()
    try:
        return gguf.GGUFReader(path)
    finally:
        gguf.gguf_reader.np = original


def fields(reader):
    return {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def scalar(field):
    return field.types[0], field.contents()


def source_tensors(hf_dir):
    """HF name -> torch tensor, read with the safetensors library."""
    tensors = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        tensors |= load_file(path)
    return tensors


def raw(tensor) -> bytes:
    return np.ascontiguousarray(tensor.data).tobytes()


def expected_type(gguf_name, out_type, ne, tied=True):
    if len(ne) == 1:
        return Q.F32
    if out_type == "q4_0" and (gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight")):
        return Q.Q8_0  # llama-quantize's head type, Q6_K, does not fit 64-value rows: Q8_0
    return WEIGHT_TYPE[out_type]


def peak_rss_of_conversion(hf_dir, out, out_type):
    """Peak RSS (bytes) of one `pyphi-convert` run."""
    exe = shutil.which("pyphi-convert")
    args = [exe, str(hf_dir), "-o", str(out), "--type", out_type, "--force", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so tell Popen
    assert proc.returncode == 0, proc.stderr.read()
    proc.stderr.close()
    return usage.ru_maxrss * 1024


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return ckpt.write_size(tmp_path_factory.mktemp("phi4-tiny"), "tiny", seed=1)


@pytest.fixture(scope="session")
def converted(tiny_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("gguf")
    return {t: convert_ok(tiny_dir, out_dir / f"tiny-{t}.gguf", t) for t in OUT_TYPES}


@pytest.fixture(scope="session")
def readers(converted):
    return {t: open_gguf(path) for t, path in converted.items()}


@pytest.fixture(scope="session")
def sources(tiny_dir):
    return source_tensors(tiny_dir)


# ---- metadata and tensor list vs SPEC §5 -----------------------------------------------------


@pytest.mark.parametrize("out_type", OUT_TYPES)
def test_metadata_matches_spec(readers, out_type):
    got = fields(readers[out_type])
    expected = TINY_METADATA | {"general.file_type": (V.UINT32, int(FILE_TYPE[out_type]))}
    assert set(got) == set(expected) | ARRAY_KEYS | set(CARD_ARRAYS)
    for key, items in CARD_ARRAYS.items():
        assert got[key].types == [V.ARRAY, V.STRING] and got[key].contents() == items, key
    for key, (value_type, value) in expected.items():
        got_type, got_value = scalar(got[key])
        assert got_type == value_type, key
        if value_type == V.FLOAT32:
            assert np.float32(got_value) == value, key
        else:
            assert got_value == value, key
    assert got["tokenizer.ggml.tokens"].types == [V.ARRAY, V.STRING]
    assert got["tokenizer.ggml.token_type"].types == [V.ARRAY, V.INT32]
    assert got["tokenizer.ggml.merges"].types == [V.ARRAY, V.STRING]


@pytest.mark.parametrize("out_type", OUT_TYPES)
def test_tensor_list_matches_spec(readers, out_type):
    tensors = {t.name: t for t in readers[out_type].tensors}
    expected = {name: shape for name, (_, shape) in TINY_TENSORS.items()}
    expected |= {name: [6] for name in ROPE_TENSORS}  # 12 rotary dims -> 6 pairs
    assert set(tensors) == set(expected)  # no output.weight: the head is tied
    for name, shape in expected.items():
        assert [int(n) for n in tensors[name].shape] == shape, name
        assert tensors[name].tensor_type == expected_type(name, out_type, shape), name


@pytest.mark.parametrize("out_type", ["f32", "f16", "bf16"])
def test_float_data_equals_source(readers, sources, tiny_dir, out_type):
    tensors = {t.name: t for t in readers[out_type].tensors}
    torch_type = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[out_type]
    for name, (hf_name, shape) in TINY_TENSORS.items():
        dtype = torch.float32 if len(shape) == 1 else torch_type
        expected = sources[hf_name].to(dtype).contiguous().view(torch.uint8).numpy().tobytes()
        assert raw(tensors[name]) == expected, name
    scaling = json.loads((tiny_dir / "config.json").read_text())["rope_scaling"]
    for name, key in ROPE_TENSORS.items():
        assert raw(tensors[name]) == np.array(scaling[key], dtype=np.float32).tobytes()


@pytest.mark.parametrize("out_type", ["q8_0", "q4_0"])
def test_quantized_data_bit_identical_to_gguf_py(readers, sources, out_type):
    tensors = {t.name: t for t in readers[out_type].tensors}
    for name, (hf_name, shape) in TINY_TENSORS.items():
        values = sources[hf_name].to(torch.float32).numpy()
        qtype = expected_type(name, out_type, shape)
        expected = values.tobytes() if qtype == Q.F32 else gguf.quants.quantize(values, qtype).tobytes()
        assert raw(tensors[name]) == expected, name


# ---- vocabulary vs SPEC §5.1 / §6.1 ----------------------------------------------------------

ADDED = [
    "<|assistant|>",
    "<|end|>",
    "<|user|>",
    "<|system|>",
    "<|tool|>",
    "<|/tool|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_response|>",
    "<|tag|>",
]  # ids 200019..200028


def test_vocabulary_matches_spec(readers, tiny_dir):
    got = fields(readers["q4_0"])
    tokens = got["tokenizer.ggml.tokens"].contents()
    types = got["tokenizer.ggml.token_type"].contents()
    merges = got["tokenizer.ggml.merges"].contents()

    vocab = json.loads((tiny_dir / "vocab.json").read_text(encoding="utf-8"))
    expected_tokens = [None] * 200064
    for text, i in vocab.items():
        expected_tokens[i] = text
    expected_tokens[200019:200029] = ADDED
    expected_tokens[200029:] = [f"[PAD{i}]" for i in range(200029, 200064)]
    assert len(tokens) == 200064
    assert tokens == expected_tokens
    assert tokens[199999] == "<|endoftext|>" and tokens[200018] == "<|endofprompt|>"
    assert tokens[199998] == "<|endoftext98|>" and tokens[200017] == "<|endoftext17|>"

    normal, control, unused = 1, 3, 5
    expected_types = [normal] * 200064
    for i in [199999, *range(200018, 200029)]:
        expected_types[i] = control
    expected_types[200029:] = [unused] * 35
    assert types == expected_types
    assert types[199997:200001] == [normal, normal, control, normal]
    assert types[200017:200020] == [normal, control, control]
    assert types[200028:200030] == [control, unused] and types[200063] == unused

    assert len(merges) == 199742
    assert merges[:4] == ["Ġ Ġ", "ĠĠ ĠĠ", "i n", "e r"]
    lines = (tiny_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and merges == lines[1:]


def test_vocabulary_from_vocab_json_and_merges_txt(tiny_dir, converted, tmp_path):
    """Without tokenizer.json, vocab.json + merges.txt + tokenizer_config.json give the same file."""
    hf_dir = tmp_path / "no-tokenizer-json"
    clone(tiny_dir, hf_dir, skip={"tokenizer.json"})
    out = convert_ok(hf_dir, tmp_path / "out.gguf", "q4_0")
    assert out.read_bytes() == converted["q4_0"].read_bytes()


# ---- head_dim 128: the real 96 rotary dims and 48-entry LongRoPE lists -------------------------


@pytest.fixture(scope="session")
def head128(tmp_path_factory):
    hf_dir = ckpt.write_size(tmp_path_factory.mktemp("phi4-head128"), "head128", seed=2)
    out = tmp_path_factory.mktemp("gguf128") / "head128-f32.gguf"
    return hf_dir, out, peak_rss_of_conversion(hf_dir, out, "f32")


def test_head128_rotary_dims_and_factor_lists(head128):
    hf_dir, out, _ = head128
    reader = open_gguf(out)
    got = fields(reader)
    assert scalar(got["phi3.rope.dimension_count"]) == (V.UINT32, 96)
    assert scalar(got["phi3.attention.head_count"]) == (V.UINT32, 2)
    assert np.float32(got["phi3.rope.scaling.attn_factor"].contents()) == np.float32(ATTN_FACTOR)
    real = json.loads((ckpt.REAL_FILES / "config.json").read_text())["rope_scaling"]
    tensors = {t.name: t for t in reader.tensors}
    for name, key in ROPE_TENSORS.items():
        assert len(real[key]) == 48
        assert raw(tensors[name]) == np.array(real[key], dtype=np.float32).tobytes()
    sources = source_tensors(hf_dir)
    assert (
        raw(tensors["blk.1.attn_qkv.weight"])
        == sources["model.layers.1.self_attn.qkv_proj.weight"].float().numpy().tobytes()
    )
    assert [int(n) for n in tensors["blk.1.attn_qkv.weight"].shape] == [256, 512]  # (2 + 2*1) * 128


def test_peak_rss_does_not_grow_with_the_checkpoint(head128, tiny_dir, tmp_path):
    """head128's source is 4x tiny's (103 vs 26 MB of bf16; 410 MB of f32 written): streaming
    keeps the peak RSS difference to the size of a conversion chunk or two."""
    _, _, rss_head128 = head128
    rss_tiny = peak_rss_of_conversion(tiny_dir, tmp_path / "tiny.gguf", "f32")
    assert rss_head128 - rss_tiny < 48 << 20, (rss_tiny, rss_head128)


# ---- other Phi-3 configs: untied head, full rotary, no LongRoPE ---------------------------------


def test_phi3_style_config(tmp_path):
    config = ckpt.size_config("tiny")
    config.update(
        tie_word_embeddings=False,
        rope_scaling=None,
        sliding_window=2047,
        original_max_position_embeddings=4096,
        max_position_embeddings=4096,
    )
    del config["partial_rotary_factor"]
    hf_dir = ckpt.write_checkpoint(
        tmp_path / "phi3-style", config, seed=3, max_shard_bytes=ckpt.MAX_SHARD_BYTES["tiny"]
    )
    reader = open_gguf(convert_ok(hf_dir, tmp_path / "out.gguf", "q4_0"))
    got = fields(reader)
    assert scalar(got["phi3.rope.dimension_count"]) == (V.UINT32, 16)  # full rotary: head_dim
    assert scalar(got["phi3.attention.sliding_window"]) == (V.UINT32, 2047)
    assert "phi3.rope.scaling.attn_factor" not in got
    tensors = {t.name: t for t in reader.tensors}
    assert not set(ROPE_TENSORS) & set(tensors)
    assert tensors["output.weight"].tensor_type == Q.Q8_0
    assert tensors["token_embd.weight"].tensor_type == Q.Q4_0
    lm_head = source_tensors(hf_dir)["lm_head.weight"].float().numpy()
    assert raw(tensors["output.weight"]) == gguf.quants.quantize(lm_head, Q.Q8_0).tobytes()


def test_rope_parameters_config_of_transformers_5(tiny_dir, converted, tmp_path):
    """A config saved by transformers >= 5 keeps the RoPE settings in `rope_parameters`; the
    converted file is the same."""
    config = json.loads((tiny_dir / "config.json").read_text())
    rope = config.pop("rope_scaling")
    rope |= {
        "rope_type": rope.pop("type"),
        "rope_theta": config.pop("rope_theta"),
        "partial_rotary_factor": config.pop("partial_rotary_factor"),
        "original_max_position_embeddings": config.pop("original_max_position_embeddings"),
    }
    config["rope_parameters"] = rope
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={"config.json"})
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2))
    out = convert_ok(hf_dir, tmp_path / "out.gguf", "q4_0")
    assert out.read_bytes() == converted["q4_0"].read_bytes()


def test_tensor_type_rules():
    """llama-quantize's choices for phi3, derived by hand from src/llama-quant.cpp."""
    from pyphi.convert.mixes import tensor_type

    assert tensor_type("blk.0.attn_norm.weight", (64,), "q4_0", 2, True) is None  # 1-D and norms
    assert tensor_type("blk.0.attn_qkv.weight", (64, 128), "q4_0", 2, True) == Q.Q4_0
    # The head (a tied token_embd is the head): Q6_K where 256-value blocks fit, else Q8_0.
    assert tensor_type("token_embd.weight", (3072, 200064), "q4_0", 32, True) == Q.Q6_K
    assert tensor_type("token_embd.weight", (64, 200064), "q4_0", 2, True) == Q.Q8_0
    assert tensor_type("token_embd.weight", (64, 200064), "q4_0", 2, False) == Q.Q4_0
    assert tensor_type("output.weight", (64, 200064), "q4_0", 2, False) == Q.Q8_0
    assert tensor_type("token_embd.weight", (3072, 200064), "q8_0", 32, True) == Q.Q8_0
    # Q4_K_M on Phi-4-mini's 32 layers: attn_qkv and ffn_down Q6_K in layers 0-3, 28-31 and
    # every third layer from 6 (use_more_bits), Q4_K elsewhere; attn_output and ffn_up Q4_K.
    more = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    for i in range(32):
        expected = Q.Q6_K if i in more else Q.Q4_K
        assert tensor_type(f"blk.{i}.attn_qkv.weight", (3072, 5120), "q4_k_m", 32, True) == expected
        assert tensor_type(f"blk.{i}.ffn_down.weight", (8192, 3072), "q4_k_m", 32, True) == expected
        assert tensor_type(f"blk.{i}.ffn_up.weight", (3072, 16384), "q4_k_m", 32, True) == Q.Q4_K
        assert tensor_type(f"blk.{i}.attn_qkv.weight", (3072, 5120), "q4_k_s", 32, True) == (
            Q.Q5_K if i < 4 else Q.Q4_K)
        assert tensor_type(f"blk.{i}.ffn_down.weight", (8192, 3072), "q4_k_s", 32, True) == (
            Q.Q5_K if i < 4 else Q.Q4_K)
    # K types on rows their 256-value blocks do not divide: llama.cpp's 32-value fallbacks.
    assert tensor_type("blk.0.ffn_up.weight", (96, 256), "q4_k_m", 2, True) == Q.Q5_0
    assert tensor_type("blk.0.ffn_up.weight", (96, 256), "q5_k_s", 2, True) == Q.Q5_1
    assert tensor_type("blk.0.ffn_up.weight", (96, 256), "q6_k", 2, True) == Q.Q8_0
    # Rows that do not fill whole 32-value blocks either: F16, as llama.cpp falls back.
    assert tensor_type("blk.0.ffn_down.weight", (48, 64), "q8_0", 2, True) == Q.F16
    assert tensor_type("blk.0.ffn_down.weight", (48, 64), "q4_k_m", 2, True) == Q.F16
    assert tensor_type("blk.0.ffn_down.weight", (48, 64), "bf16", 2, True) == Q.BF16


def test_internal_error_is_one_line_with_status_1(monkeypatch, capsys):
    from pyphi.convert import cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "convert", broken)
    assert cli.main(["some-dir", "-o", "out.gguf"]) == 1
    err = capsys.readouterr().err
    assert err == "pyphi-convert: internal error: RuntimeError: a bug over two lines\n"


# ---- general.* naming keys vs gguf-py's heuristics -----------------------------------------------

MODEL_IDS = [
    "microsoft/Phi-4-mini-instruct",
    "Phi-4-mini-instruct",
    "microsoft/Phi-3-mini-4k-instruct",
    "microsoft/Phi-3.5-mini-instruct",
    "microsoft/Phi-3-medium-128k-instruct",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "bigscience/bloom-7b1",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "some-model-Q4_K_M",
    "Phi 4 Mini",
    "tiny0",
]


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("total_params", [3_836_021_760, 13_000_000])
def test_model_name_heuristics_match_gguf_py(model_id, total_params):
    from gguf.metadata import Metadata
    from pyphi.convert.naming import parse_model_id

    full, org, basename, finetune, version, size = Metadata.get_model_id_components(model_id, total_params)
    title = Metadata.id_to_title
    expected = (title(full), title(org) if org else None, basename, finetune, version, size)
    got = parse_model_id(model_id, total_params)
    assert (got.name, got.organization, got.basename, got.finetune, got.version, got.size_label) == expected


def test_model_card_front_matter_subset():
    from pyphi.convert.model_card import front_matter

    card = front_matter(ckpt.MODEL_CARD)
    assert card == {
        "license": "mit",
        "license_link": "https://huggingface.co/microsoft/Phi-4-mini-instruct/resolve/main/LICENSE",
        "language": ["multilingual"],
        "pipeline_tag": "text-generation",
        "tags": ["nlp", "code"],
        "library_name": "transformers",
    }  # `widget` (nested) is skipped
    text = "---\nlicense: 'apache-2.0'\ntags: [a, \"b\"]\nlanguage:\n  - en\n  - fr\nx: |\n  y\n---\nlicense: no\n"
    assert front_matter(text) == {"license": "apache-2.0", "tags": ["a", "b"], "language": ["en", "fr"]}
    assert front_matter("no front matter\n---\n") == {}


# ---- re-conversion and the output file --------------------------------------------------------


def test_reconvert_with_force(tiny_dir, converted, tmp_path):
    out = tmp_path / "again.gguf"
    shutil.copyfile(converted["q8_0"], out)
    convert_ok(tiny_dir, out, "q4_0", "--force")
    assert out.read_bytes() == converted["q4_0"].read_bytes()
    assert os.listdir(tmp_path) == ["again.gguf"]  # no temporary file left
    assert (os.stat(out).st_mode & 0o777) == 0o666 & ~_umask()


def test_result_does_not_depend_on_thread_count(tiny_dir, converted, tmp_path):
    out = convert_ok(tiny_dir, tmp_path / "one-thread.gguf", "q4_0", "--threads", "1")
    assert out.read_bytes() == converted["q4_0"].read_bytes()


def test_sigterm_leaves_no_file(head128, tmp_path):
    """Killed mid-conversion (SIGTERM), pyphi-convert removes its temporary file."""
    hf_dir, _, _ = head128
    exe = shutil.which("pyphi-convert")
    proc = subprocess.Popen(
        [exe, str(hf_dir), "-o", str(tmp_path / "out.gguf"), "--type", "f32", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the conversion finished before the signal arrived")
    assert proc.returncode == 130, stderr
    # The signal can land after the rename, on a busy machine: then the final name holds the
    # whole file. Either way no temporary file is left and nothing partial has the final name.
    left = os.listdir(tmp_path)
    assert left in ([], ["out.gguf"]), left
    if left:  # complete: the reader checks every tensor's bytes lie inside the file
        weight_map = json.loads((hf_dir / ckpt.INDEX_FILE).read_text())["weight_map"]
        with GGUFFile(tmp_path / "out.gguf") as f:
            assert len(f.tensors) == len(weight_map) + 2  # + rope_factors_long/_short


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- bad input: one line on stderr naming file and field, status 2, nothing written -----------


def clone(src, dst, skip=()):
    """dst gets symlinks to every file of src except those in skip."""
    dst.mkdir()
    for path in src.iterdir():
        if path.name not in skip:
            (dst / path.name).symlink_to(path)
    return dst


def assert_fails_cleanly(hf_dir, out_dir, *needles, extra=()):
    before = sorted(os.listdir(out_dir))
    proc = pyphi_convert(hf_dir, "-o", out_dir / "out.gguf", "--type", "q4_0", "--no-progress", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pyphi-convert: error: "), lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    assert sorted(os.listdir(out_dir)) == before
    return lines[0]


def test_missing_config(tiny_dir, tmp_path):
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={"config.json"})
    assert_fails_cleanly(hf_dir, tmp_path, hf_dir / "config.json", "missing")


def test_unsupported_architecture(tiny_dir, tmp_path):
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={"config.json"})
    config = json.loads((tiny_dir / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    line = assert_fails_cleanly(hf_dir, tmp_path)
    assert line == (
        f"pyphi-convert: error: {hf_dir / 'config.json'}: "
        "'architectures' is ['LlamaForCausalLM'], expected Phi3ForCausalLM"
    )


def test_factor_list_of_wrong_length(tiny_dir, tmp_path):
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={"config.json"})
    config = json.loads((tiny_dir / "config.json").read_text())
    config["rope_scaling"]["long_factor"] = config["rope_scaling"]["long_factor"][:5]
    (hf_dir / "config.json").write_text(json.dumps(config))
    assert_fails_cleanly(
        hf_dir, tmp_path, hf_dir / "config.json", "'rope_scaling.long_factor'", "5", "expected 6"
    )


def test_truncated_shard(tiny_dir, tmp_path):
    shard = "model-00002-of-00002.safetensors"
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={shard})
    data = (tiny_dir / shard).read_bytes()
    (hf_dir / shard).write_bytes(data[:-1000])
    assert_fails_cleanly(hf_dir, tmp_path, hf_dir / shard, "truncated", "tensor '")


def test_shard_named_in_index_but_absent(tiny_dir, tmp_path):
    shard = "model-00002-of-00002.safetensors"
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={shard})
    assert_fails_cleanly(hf_dir, tmp_path, hf_dir / shard, "missing", "model.safetensors.index.json")


def test_tensor_with_wrong_shape(tiny_dir, tmp_path):
    shard = "model-00002-of-00002.safetensors"
    hf_dir = clone(tiny_dir, tmp_path / "in", skip={shard})
    shards = ckpt.shard_plan(ckpt.tensor_shapes(ckpt.size_config("tiny")), ckpt.MAX_SHARD_BYTES["tiny"])
    tensors = [(name, (65,) if name == "model.norm.weight" else shape) for name, shape in shards[1]]
    ckpt.write_safetensors(hf_dir / shard, tensors, seed=1)
    assert_fails_cleanly(hf_dir, tmp_path, hf_dir / shard, "'model.norm.weight'", "[65]", "[64]")


def test_existing_output_without_force(tiny_dir, tmp_path):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"precious")
    assert_fails_cleanly(tiny_dir, tmp_path, out, "exists", "--force")
    assert out.read_bytes() == b"precious"


# ---- the checkpoint generator ------------------------------------------------------------------


def test_generator_full_layout_reproduces_the_real_files():
    """The full size's config.json is the real file, and its shard split reproduces the real
    index (sha256 prefix/suffix from SPEC §1 and §3) without writing 7.7 GB."""
    config = ckpt.size_config("full")
    assert hashlib.sha256((json.dumps(config, indent=2) + "\n").encode()).hexdigest() == (
        "ac65d86061d3d0d704ee2511fd0eb8713ef19eb6eedba17c3080a4165d5b933b"
    )
    shards = ckpt.shard_plan(ckpt.tensor_shapes(config), ckpt.MAX_SHARD_BYTES["full"])
    assert [len(s) for s in shards] == [111, 83]
    digest = hashlib.sha256(ckpt.index_text(shards, ckpt.shard_names(2)).encode()).hexdigest()
    assert digest.startswith("613a98d5") and digest.endswith("c6c59")
    assert sum(math.prod(shape) for s in shards for _, shape in s) == 3_836_021_760


def test_generator_is_deterministic_and_readable_by_safetensors(tiny_dir, sources, tmp_path):
    again = source_tensors(ckpt.write_size(tmp_path / "again", "tiny", seed=1))
    assert sources.keys() == again.keys() and len(sources) == 2 + 2 * 6
    assert all(torch.equal(sources[k], again[k]) and sources[k].dtype == torch.bfloat16 for k in sources)
    norm = sources["model.norm.weight"].float()
    assert abs(norm.mean().item() - 1) < 0.01
    assert abs(sources["model.embed_tokens.weight"].float().std().item() - 0.02) < 0.001


# ---- requantizing a GGUF file ------------------------------------------------------------------


def test_requantize_f32_file_gives_the_direct_conversion(converted, tmp_path):
    """The F32 file holds the checkpoint's bf16 values exactly, so requantizing it must give
    the direct conversion, byte for byte (the key values copied in order, general.file_type set
    to the new type's, 1-D tensors copied)."""
    for out_type in ("q8_0", "q4_0", "bf16", "f16"):
        out = convert_ok(converted["f32"], tmp_path / f"re-{out_type}.gguf", out_type)
        assert out.read_bytes() == converted[out_type].read_bytes(), out_type


def test_requantize_from_q8_0_warns(converted, tmp_path):
    proc = pyphi_convert(converted["q8_0"], "-o", tmp_path / "out.gguf", "--type", "q4_0", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"pyphi-convert: warning: {converted['q8_0']}: requantizing Q8_0 weights loses quality twice; "
        "a F16/BF16 source is better"
    ]
    tensors = {t.name: t for t in open_gguf(tmp_path / "out.gguf").tensors}
    source = {t.name: t for t in open_gguf(converted["q8_0"]).tensors}
    # Q8_0 -> float32 -> Q4_0, as gguf-py computes it; the head stays Q8_0 and is copied.
    embd = source["token_embd.weight"]
    assert raw(tensors["token_embd.weight"]) == raw(embd)
    qkv = source["blk.0.attn_qkv.weight"]
    values = gguf.quants.dequantize(np.asarray(qkv.data), Q.Q8_0)
    assert raw(tensors["blk.0.attn_qkv.weight"]) == gguf.quants.quantize(values, Q.Q4_0).tobytes()


def test_requantize_refuses_other_quantized_sources(converted, tmp_path):
    out = tmp_path / "out.gguf"
    proc = pyphi_convert(converted["q4_0"], "-o", out, "--type", "q8_0", "--no-progress")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"pyphi-convert: error: {converted['q4_0']}: tensor 'blk.0.attn_output.weight' is Q4_0; "
        "requantizing needs F32, F16, BF16 or Q8_0 weights (convert the original checkpoint instead)\n"
    )
    assert not out.exists() and not list(tmp_path.iterdir())
