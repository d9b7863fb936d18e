"""The Phi-3 architecture family (HF `Phi3ForCausalLM`: Phi-4-mini, Phi-3/3.5-mini): GGUF arch `phi3`.

One class, in the manner of llama.cpp's converter (conversion/phi.py `Phi3MiniModel`, SPEC §5):
the literal HF -> GGUF tensor-name table, the tensor shapes the config implies, the `phi3.*`
hyperparameter keys, the LongRoPE factor tensors, and the checks that the checkpoint is what the
config says before anything is written. Fused tensors stay fused (`qkv_proj` -> `attn_qkv`,
`gate_up_proj` -> `ffn_up`) and no weight is permuted: llama.cpp's phi3 graph uses NeoX RoPE on
the HF layout (SPEC §4.5, §5.2).

What this is not: the writer or the vocabulary (see gguf_writer.py, vocab.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import ConvertError

# HF tensor name -> GGUF tensor name (gguf-py tensor_mapping.py; MODEL_ARCH.PHI3 in constants.py).
TENSOR_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
BLOCK_TENSOR_NAMES = {
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.qkv_proj.weight": "blk.{bid}.attn_qkv.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.mlp.gate_up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
}
ROPE_FACTORS_LONG = "rope_factors_long.weight"
ROPE_FACTORS_SHORT = "rope_factors_short.weight"

# Phi-3's `<|end|>` ends every chat turn (generation_config.json lists it beside `<|endoftext|>`,
# SPEC §2); it is written as the EOT token so that any reader stops on both.
END_OF_TURN = "<|end|>"

# Phi3Config's defaults (transformers configuration_phi3.py) for keys a config may omit.
DEFAULT_ROPE_THETA = 10000.0
DEFAULT_PARTIAL_ROTARY_FACTOR = 1.0
LONGROPE_TYPES = ("longrope", "su")  # "su" is the older name of the same scheme


class Phi3:
    """Hyperparameters of a Phi3ForCausalLM config.json, validated; the tensors it implies."""

    ARCH = "phi3"
    HF_ARCHITECTURES = ("Phi3ForCausalLM",)

    def __init__(self, config: dict, config_path: Path):
        self._config, self._path = config, config_path
        self._rope_key, self._rope = self._rope_parameters()
        self.n_embd = self._int("hidden_size")
        self.n_head = self._int("num_attention_heads")
        self.n_head_kv = self._int("num_key_value_heads", default=self.n_head)
        self.n_layer = self._int("num_hidden_layers")
        self.n_ff = self._int("intermediate_size")
        self.n_vocab = self._int("vocab_size")
        self.n_ctx = self._int("max_position_embeddings")
        self.n_ctx_orig = self._int("original_max_position_embeddings", default=self.n_ctx, rope=True)
        self.rms_eps = self._float("rms_norm_eps")
        self.rope_theta = self._float("rope_theta", default=DEFAULT_ROPE_THETA, rope=True)
        self.sliding_window = self._int("sliding_window", default=0, allow_zero=True)
        self.tied = config.get("tie_word_embeddings", False) is True
        self._check_heads()
        partial = self._float("partial_rotary_factor", default=DEFAULT_PARTIAL_ROTARY_FACTOR, rope=True)
        # llama.cpp: int(partial_rotary_factor * n_embd) // n_head (phi.py); HF: int(head_dim * factor).
        self.n_rot = int(partial * self.n_embd) // self.n_head
        if self.n_rot % 2 or not 0 < self.n_rot <= self.head_dim:
            self._fail(
                "partial_rotary_factor",
                f"gives {self.n_rot} rotary dims of {self.head_dim}, expected an even number up to it",
            )
        self.rope_factors = self._rope_factors()

    # ---- config fields -----------------------------------------------------------------------

    def _rope_parameters(self) -> tuple[str, dict]:
        """The RoPE settings object: `rope_parameters` (configs saved by transformers >= 5) or
        `rope_scaling`. Like llama.cpp (conversion/base.py), a value there wins over the same
        top-level key (rope_theta, partial_rotary_factor, original_max_position_embeddings)."""
        key = "rope_parameters" if "rope_parameters" in self._config else "rope_scaling"
        rope = self._config.get(key)
        if rope is not None and not isinstance(rope, dict):
            self._fail(key, f"is {rope!r}, expected an object")
        return key, rope or {}

    def _fail(self, key: str, what: str):
        raise ConvertError(self._path, f"{key!r} {what}")

    def _get(self, key: str, rope: bool) -> tuple[object, str]:
        """The value of `key` and the field name to report it under."""
        if rope and key in self._rope:
            return self._rope[key], f"{self._rope_key}.{key}"
        return self._config.get(key), key

    def _int(self, key: str, default: int | None = None, allow_zero: bool = False, rope: bool = False) -> int:
        value, field = self._get(key, rope)
        if value is None and default is not None:
            return default
        if value is None:
            self._fail(field, "is missing")
        if type(value) is not int or value < 0 or (value == 0 and not allow_zero):
            self._fail(field, f"is {value!r}, expected a positive integer")
        return value

    def _float(self, key: str, default: float | None = None, rope: bool = False) -> float:
        value, field = self._get(key, rope)
        if value is None and default is not None:
            return default
        if value is None:
            self._fail(field, "is missing")
        if type(value) not in (int, float) or not value > 0:
            self._fail(field, f"is {value!r}, expected a positive number")
        return float(value)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def _check_heads(self) -> None:
        if self.n_embd % self.n_head:
            self._fail(
                "hidden_size", f"{self.n_embd} is not a multiple of 'num_attention_heads' {self.n_head}"
            )
        if self.n_head % self.n_head_kv:
            self._fail(
                "num_attention_heads",
                f"{self.n_head} is not a multiple of 'num_key_value_heads' {self.n_head_kv}",
            )
        # HF Phi3Attention and llama.cpp's phi3 graph both use hidden_size // num_attention_heads.
        head_dim = self._config.get("head_dim")
        if head_dim is not None and head_dim != self.head_dim:
            self._fail(
                "head_dim",
                f"is {head_dim!r}, expected hidden_size / num_attention_heads = {self.head_dim}",
            )

    def _rope_factors(self) -> tuple[list[float], list[float]] | None:
        """LongRoPE (long, short) factor lists, one per rotated pair (SPEC §4.6); None without
        them (plain RoPE). llama.cpp refuses lists whose length is not n_rot / 2 (phi.py)."""
        if not self._rope.get("long_factor"):
            return None
        kind = self._rope.get("rope_type", self._rope.get("type"))
        if kind not in LONGROPE_TYPES:
            self._fail(f"{self._rope_key}.type", f"is {kind!r}, expected one of {', '.join(LONGROPE_TYPES)}")
        factors = []
        for key in ("long_factor", "short_factor"):
            values, field = self._rope.get(key), f"{self._rope_key}.{key}"
            if not (isinstance(values, list) and all(type(v) in (int, float) and v > 0 for v in values)):
                self._fail(field, f"is {values!r}, expected a list of positive numbers")
            if len(values) != self.n_rot // 2:
                self._fail(
                    field,
                    f"has {len(values)} entries, expected {self.n_rot // 2} "
                    f"(one per rotated pair of the {self.n_rot} rotary dims)",
                )
            factors.append([float(v) for v in values])
        return factors[0], factors[1]

    def attn_factor(self) -> float:
        """LongRoPE's cos/sin scale: sqrt(1 + ln(s) / ln(n_ctx_orig)), s = n_ctx / n_ctx_orig,
        1 when s <= 1 (HF modeling_rope_utils `_compute_longrope_parameters`; phi.py). A config
        `attention_factor` is not consulted, exactly as llama.cpp's converter does."""
        scale = self.n_ctx / self.n_ctx_orig
        return math.sqrt(1 + math.log(scale) / math.log(self.n_ctx_orig)) if scale > 1 else 1.0

    # ---- GGUF metadata -----------------------------------------------------------------------

    def add_rope_scaling(self, writer) -> None:
        """`phi3.rope.scaling.attn_factor`, only for LongRoPE models. llama.cpp writes it while
        generating the factor tensors, before any other model key; the caller keeps that order."""
        if self.rope_factors is not None:
            writer.add_float32(f"{self.ARCH}.rope.scaling.attn_factor", self.attn_factor())

    def add_hparams(self, writer, file_type: int) -> None:
        """The hyperparameter keys and general.file_type, in llama.cpp's order (phi.py
        `set_gguf_parameters`). Not written, as in llama.cpp: rope.scaling.type and .factor."""
        arch = self.ARCH
        writer.add_uint32(f"{arch}.context_length", self.n_ctx)
        writer.add_uint32(f"{arch}.rope.scaling.original_context_length", self.n_ctx_orig)
        writer.add_uint32(f"{arch}.embedding_length", self.n_embd)
        writer.add_uint32(f"{arch}.feed_forward_length", self.n_ff)
        writer.add_uint32(f"{arch}.block_count", self.n_layer)
        writer.add_uint32(f"{arch}.attention.head_count", self.n_head)
        writer.add_uint32(f"{arch}.attention.head_count_kv", self.n_head_kv)
        writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", self.rms_eps)
        writer.add_uint32(f"{arch}.rope.dimension_count", self.n_rot)
        writer.add_float32(f"{arch}.rope.freq_base", self.rope_theta)
        writer.add_uint32("general.file_type", file_type)
        # 0 when the config has none: llama.cpp uses it to tell Phi-4 from other Phi-3 models.
        writer.add_uint32(f"{arch}.attention.sliding_window", self.sliding_window)

    def eot_token_id(self, vocab) -> int | None:
        return vocab.token_id(END_OF_TURN)

    # ---- tensors -----------------------------------------------------------------------------

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the checkpoint must hold, HF name -> HF shape [out, in] (SPEC §3)."""
        qkv = (self.n_head + 2 * self.n_head_kv) * self.head_dim
        shapes = {"model.embed_tokens.weight": (self.n_vocab, self.n_embd)}
        block = {
            "model.layers.{bid}.input_layernorm.weight": (self.n_embd,),
            "model.layers.{bid}.self_attn.qkv_proj.weight": (qkv, self.n_embd),
            "model.layers.{bid}.self_attn.o_proj.weight": (self.n_embd, self.n_head * self.head_dim),
            "model.layers.{bid}.post_attention_layernorm.weight": (self.n_embd,),
            "model.layers.{bid}.mlp.gate_up_proj.weight": (2 * self.n_ff, self.n_embd),
            "model.layers.{bid}.mlp.down_proj.weight": (self.n_embd, self.n_ff),
        }
        for bid in range(self.n_layer):
            shapes.update({name.format(bid=bid): shape for name, shape in block.items()})
        shapes["model.norm.weight"] = (self.n_embd,)
        if not self.tied:
            shapes["lm_head.weight"] = (self.n_vocab, self.n_embd)
        return shapes

    @staticmethod
    def gguf_name(hf_name: str) -> str:
        if hf_name in TENSOR_NAMES:
            return TENSOR_NAMES[hf_name]
        parts = hf_name.split(".")
        pattern = ".".join("{bid}" if p.isdecimal() else p for p in parts)
        bid = next(p for p in parts if p.isdecimal())
        return BLOCK_TENSOR_NAMES[pattern].format(bid=bid)

    def check_tensors(self, tensors: dict) -> None:
        """Every tensor the config implies is present with its shape, and nothing else is.
        `tensors`: HF name -> checkpoint TensorInfo (with .path and .shape)."""
        expected = self.hf_shapes()
        for name, info in tensors.items():
            if name not in expected:
                why = " ('tie_word_embeddings' is true)" if name == "lm_head.weight" else ""
                raise ConvertError(
                    info.path, f"tensor {name!r} is not part of a {self.HF_ARCHITECTURES[0]}{why}"
                )
            if info.shape != expected[name]:
                raise ConvertError(
                    info.path,
                    f"tensor {name!r} has shape {list(info.shape)}, "
                    f"expected {list(expected[name])} from config.json",
                )
        for name in expected:
            if name not in tensors:
                raise ConvertError(self._path.parent, f"tensor {name!r} is missing from the checkpoint")

    def extra_tensors(self) -> list[tuple[str, np.ndarray]]:
        """Tensors made from the config, written before the checkpoint's (as llama.cpp does):
        the LongRoPE factors, float32, one per rotated pair."""
        if self.rope_factors is None:
            return []
        long, short = self.rope_factors
        return [
            (ROPE_FACTORS_LONG, np.array(long, dtype=np.float32)),
            (ROPE_FACTORS_SHORT, np.array(short, dtype=np.float32)),
        ]
