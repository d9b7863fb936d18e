"""pyphi-convert's per-tensor type mixes against llama-quantize itself (marker `peer`).

llama.cpp's quantizer (`llama_model_quantize` of the installed llama-cpp-python 0.3.36, without an
importance matrix) quantizes our F16 file of a random checkpoint to every llama-quantize type we
offer; for each, the type of every tensor and general.file_type must be what mixes.py chooses
for the same file. Two checkpoints show the rules' branches:
- "k": 10 layers, rows of 256 (attn_qkv, attn_output, ffn_up, the tied head) where the K types
  apply, and ffn_down rows of 384 where they do not (llama.cpp falls back to Q5_0/Q5_1/Q8_0);
  10 layers make `use_more_bits` pick layers 0, 3, 6, 8, 9 and Q4_K_S's first 4 / first 1.
- "small": 8 layers, untied head (output.weight and token_embd.weight apart), rows of 64 that no
  256-block fits, and ffn_down rows of 80 that no 32-block fits either (F16).
Then the files themselves: pyphi-convert requantizing the same F16 file gives llama-quantize's
bytes, tensor by tensor; and converting the checkpoint directly to q4_k_m gives what
llama-quantize makes of our F32 file (bf16 -> f32 is exact).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import gguf
import numpy as np
import pytest

from pyphi.convert.mixes import MIXES, tensor_type
from pyphi.gguf_reader import GGUFFile
from pyphi.testing import checkpoint as ckpt

pytestmark = pytest.mark.peer

LLAMA_QUANTIZE_TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]
FTYPE = {name: int(getattr(gguf.LlamaFileType, "MOSTLY_" + name.upper())) for name in LLAMA_QUANTIZE_TYPES}
CONFIGS = {  # name -> (generator size, overrides)
    "k": ("head128", {"intermediate_size": 384, "num_hidden_layers": 10}),
    "small": ("tiny", {"intermediate_size": 80, "num_hidden_layers": 8, "tie_word_embeddings": False}),
}
Q = gguf.GGMLQuantizationType


def _convert(source, out, out_type):
    exe = shutil.which("pyphi-convert")
    assert exe, "pyphi-convert is not on PATH: install the package"
    proc = subprocess.run([exe, str(source), "-o", str(out), "--type", out_type, "--no-progress"],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


def _llama_quantize(source, out, out_type):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = FTYPE[out_type], 2
    assert llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, tmp_path_factory):
    """(name, HF dir, our F16 file, our F32 file, {type: llama-quantize's file from the F16})."""
    pytest.importorskip("llama_cpp")
    name = request.param
    size, overrides = CONFIGS[name]
    config = ckpt.size_config(size) | overrides
    out = tmp_path_factory.mktemp(f"mix-{name}")
    hf_dir = ckpt.write_checkpoint(out / "hf", config, seed=5, max_shard_bytes=ckpt.MAX_SHARD_BYTES["head128"])
    f16 = _convert(hf_dir, out / "f16.gguf", "f16")
    f32 = _convert(hf_dir, out / "f32.gguf", "f32")
    theirs = {t: _llama_quantize(f16, out / f"llama-{t}.gguf", t) for t in LLAMA_QUANTIZE_TYPES}
    return name, hf_dir, f16, f32, theirs


def _types(path) -> dict[str, int]:
    with GGUFFile(path) as f:
        return {name: info.type for name, info in f.tensors.items()}


@pytest.mark.parametrize("out_type", LLAMA_QUANTIZE_TYPES)
def test_type_mix_is_llama_quantizes(model, out_type):
    name, _, f16, _, theirs = model
    with GGUFFile(f16) as f:
        n_layer = f.get("phi3.block_count")
        tied = "output.weight" not in f.tensors
        ours = {}
        for t in f.tensors.values():
            chosen = tensor_type(t.name, t.shape, out_type, n_layer, tied)
            ours[t.name] = t.type if chosen is None else chosen
    assert tied == (name == "k")
    assert ours == _types(theirs[out_type])
    with GGUFFile(theirs[out_type]) as f:
        assert f.get("general.file_type") == MIXES[out_type].file_type


def test_rules_raise_types_where_expected(model):
    """The mixes differ where the rules say, so the comparison above tests something: in "k",
    Q4_K_M gives attn_qkv and ffn_down Q6_K (ffn_down falls back to Q8_0) in layers 0, 3, 6, 8, 9."""
    name, _, _, _, theirs = model
    types = _types(theirs["q4_k_m"])
    if name == "k":
        raised = [i for i in range(10) if types[f"blk.{i}.attn_qkv.weight"] == Q.Q6_K]
        assert raised == [0, 3, 6, 8, 9]
        assert [types[f"blk.{i}.ffn_down.weight"] for i in range(10)] == [
            Q.Q8_0 if i in raised else Q.Q5_0 for i in range(10)]
        assert types["token_embd.weight"] == Q.Q6_K and types["blk.1.ffn_up.weight"] == Q.Q4_K
    else:
        assert types["output.weight"] == Q.Q8_0 and types["token_embd.weight"] == Q.Q5_0
        assert types["blk.0.ffn_down.weight"] == Q.F16


def _tensors(path) -> dict[str, tuple[int, bytes]]:
    with GGUFFile(path) as f:
        return {name: (info.type, f.tensor_data(name).tobytes()) for name, info in f.tensors.items()}


def _assert_same_tensors(ours, theirs, label):
    ours, theirs = _tensors(ours), _tensors(theirs)
    assert sorted(ours) == sorted(theirs)
    for tensor_name, (ggml_type, data) in ours.items():
        assert ggml_type == theirs[tensor_name][0], (label, tensor_name)
        assert data == theirs[tensor_name][1], (label, tensor_name)


@pytest.mark.parametrize("out_type", LLAMA_QUANTIZE_TYPES)
def test_requantized_bytes_are_llama_quantizes(model, out_type, tmp_path):
    """pyphi-convert requantizing our F16 file writes llama-quantize's tensors, byte for byte."""
    _, _, f16, _, theirs = model
    _assert_same_tensors(_convert(f16, tmp_path / "ours.gguf", out_type), theirs[out_type], out_type)


def test_converted_bytes_are_llama_quantizes(model, tmp_path):
    """Converting the checkpoint directly (bf16 -> f32 -> Q4_K_M) writes what llama-quantize
    makes of our F32 file (bf16 -> f32 is exact)."""
    _, hf_dir, _, f32, _ = model
    theirs = _llama_quantize(f32, tmp_path / "llama-from-f32.gguf", "q4_k_m")
    _assert_same_tensors(_convert(hf_dir, tmp_path / "ours.gguf", "q4_k_m"), theirs, "q4_k_m")
