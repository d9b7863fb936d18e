"""Which ggml type each tensor gets for a `--type`: the table of types and their per-tensor rules.

Two kinds of `--type`:
- f32, f16, bf16, q8_0: what llama.cpp's converter writes (conversion/base.py `prepare_tensors`):
  every matrix in that type, F16 where a row does not fill whole blocks.
- q4_0 ... q6_k: what `llama-quantize` writes for that file type without an importance matrix,
  for arch phi3 (src/llama-quant.cpp of llama.cpp 0c1e57098, the version llama-cpp-python 0.3.36
  bundles: `llama_tensor_get_type`, `llama_tensor_get_type_impl`, `tensor_type_fallback`).
  Some tensors get a higher type than the file's base type: the output head (for Phi-4-mini the
  tied token_embd, which serves as the head), and, in the _M mixes, attn_qkv and ffn_down in the
  layers `use_more_bits` picks (the first and last eighth and every third layer in between).
- q4_k_p: pyphi's own recipe (PYPHI_RECIPE below), for 4-bit files of better quality than
  q4_k_m at no larger size.

Whatever the type: 1-D tensors and norms are never quantized, and a type whose block does not
divide a tensor's row length falls back as llama.cpp's does.

What this is not: the conversion itself (convert/__init__.py, requantize.py), which asks
`tensor_type` for each tensor.
"""

from __future__ import annotations

import dataclasses
import re

from pyphi.gguf_format import GGML_BLOCK_SIZES, GGML_TYPE_NAMES

_T = {name: type_id for type_id, name in GGML_TYPE_NAMES.items()}
F32, F16, BF16 = _T["F32"], _T["F16"], _T["BF16"]
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 = _T["Q4_0"], _T["Q4_1"], _T["Q5_0"], _T["Q5_1"], _T["Q8_0"]
Q4_K, Q5_K, Q6_K = _T["Q4_K"], _T["Q5_K"], _T["Q6_K"]


@dataclasses.dataclass(frozen=True)
class Mix:
    base: int  # ggml type of the weight matrices no rule raises
    file_type: int  # general.file_type: llama.cpp's llama_ftype (gguf-py LlamaFileType)
    quantize_rules: bool  # llama-quantize's per-tensor rules apply (False: the converter's)


# --type -> Mix. The names are llama-quantize's (lower case); file types from llama.h.
MIXES = {
    "f32": Mix(F32, 0, False),  # ALL_F32
    "f16": Mix(F16, 1, False),  # MOSTLY_F16
    "bf16": Mix(BF16, 32, False),  # MOSTLY_BF16
    "q8_0": Mix(Q8_0, 7, False),  # MOSTLY_Q8_0 (llama-quantize's rules give the same types)
    "q4_0": Mix(Q4_0, 2, True),  # MOSTLY_Q4_0
    "q4_1": Mix(Q4_1, 3, True),  # MOSTLY_Q4_1
    "q5_0": Mix(Q5_0, 8, True),  # MOSTLY_Q5_0
    "q5_1": Mix(Q5_1, 9, True),  # MOSTLY_Q5_1
    "q4_k_s": Mix(Q4_K, 14, True),  # MOSTLY_Q4_K_S
    "q4_k_m": Mix(Q4_K, 15, True),  # MOSTLY_Q4_K_M
    "q5_k_s": Mix(Q5_K, 16, True),  # MOSTLY_Q5_K_S
    "q5_k_m": Mix(Q5_K, 17, True),  # MOSTLY_Q5_K_M
    "q6_k": Mix(Q6_K, 18, True),  # MOSTLY_Q6_K
    # pyphi's recipe; llama.cpp has no file type for it, and uses general.file_type only as a
    # label, so it says "Q4_K - Medium", the mix it replaces.
    "q4_k_p": Mix(Q4_K, 15, False),
}
PYPHI_RECIPE = "q4_k_p"

# q4_k_p: tensor kind -> type, every layer alike (kinds as in _kind below); the rest is Q4_K.
# Q4_K_M gives attn_qkv and ffn_down Q6_K in half the layers and Q4_K in the other half; q4_k_p
# spends about the same bits evenly, Q5_K in every layer: a b-bit type's squared error falls as
# 4^-b, so one Q5_K layer has ~1/4 the error of a Q4_K one but a Q6_K layer saves only ~3/16
# more, and the even split leaves less total error. On Phi-4-mini's shapes the file is 2.480 GB,
# q4_k_m's 2.486 GB. ffn_down is where Phi-4-mini is known to suffer from 4 bits (Microsoft's
# int4 CPU build looped until some tensors stayed int8, onnxruntime-genai #1450; Apple keeps
# down_proj at 8 bits); Q8_0 there or Q6_K in every layer does not fit in q4_k_m's size with no
# type below Q4_K's 4.5 bits. The report (README) on a random 16-layer checkpoint: KL 0.0054
# vs q4_k_m's 0.0057; ffn_down Q6_K everywhere with attn_qkv Q4_K (q4_k_m's size there) 0.0072.
PYPHI_RECIPE_TYPES = {
    "head": Q6_K,  # the output head (tied token_embd): as llama-quantize
    "ffn_down": Q5_K,
    "attn_qkv": Q5_K,
}

# llama-quantize's fallback when a K type's 256-value block does not divide the row length
# (tensor_type_fallback): a 32-value type of about the same size. A 32-value type that does not
# fit either becomes F16.
_FALLBACK = {Q4_K: Q5_0, Q5_K: Q5_1, Q6_K: Q8_0}

_LAYER = re.compile(r"blk\.(\d+)\.")


def _kind(name: str, tied: bool) -> str:
    """llama-quant.cpp `tensor_get_category`, the kinds that matter for phi3. A tied token_embd
    is the head ("for arches that share the same tensor between the token embeddings and the
    output, we quantize the token embeddings with the quantization of the output tensor")."""
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "head"
    if name == "token_embd.weight":
        return "token_embd"
    for kind in ("attn_qkv", "ffn_down"):
        if f"{kind}.weight" in name:
            return kind
    return "other"


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama-quant.cpp's choice of layers that get more bits in the _M mixes: the first and last
    eighth, and every third layer in between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _fits(ggml_type: int, n: int) -> bool:
    return n % GGML_BLOCK_SIZES[ggml_type][0] == 0


def _llama_quantize_type(out_type: str, kind: str, i_layer: int, n_layer: int, n: int) -> int:
    """llama_tensor_get_type_impl for arch phi3 without an importance matrix. i_layer is the
    layer's index: llama.cpp counts attn_qkv and ffn_down tensors in the order it visits them,
    which is by layer number (llama-model-loader.h `weight_name_comparer`), one per layer."""
    base = MIXES[out_type].base
    if kind == "head":
        # Q8_0 when the base type's block does not divide the row; otherwise Q6_K (Q8_0 stays).
        return Q8_0 if not _fits(base, n) or base == Q8_0 else Q6_K
    more_bits = use_more_bits(i_layer, n_layer)
    if kind == "attn_qkv":  # phi3's fused QKV counts as attn_v ("category_is_attn_v")
        if out_type in ("q4_k_m", "q5_k_m") and more_bits:
            return Q6_K
        if out_type == "q4_k_s" and i_layer < 4:
            return Q5_K
    if kind == "ffn_down":
        if out_type in ("q4_k_m", "q5_k_m") and more_bits:
            return Q6_K
        if out_type == "q4_k_s" and i_layer < n_layer // 8:
            return Q5_K
    return base


def _pyphi_recipe_type(kind: str) -> int:
    return PYPHI_RECIPE_TYPES.get(kind, MIXES[PYPHI_RECIPE].base)


def tensor_type(name: str, ne: tuple[int, ...], out_type: str, n_layer: int, tied: bool) -> int | None:
    """The ggml type of tensor `name` (ggml shape `ne`, ne[0] the row length) in a `--type
    out_type` file of a model with `n_layer` layers; `tied`: token_embd is also the head.
    None for a tensor that is never quantized (1-D, norms): it keeps its type (F32 from a
    checkpoint)."""
    if len(ne) == 1 or name.endswith("_norm.weight"):
        return None
    mix, n = MIXES[out_type], ne[0]
    if out_type == PYPHI_RECIPE:
        wanted = _pyphi_recipe_type(_kind(name, tied))
    elif mix.quantize_rules:
        match = _LAYER.match(name)
        i_layer = int(match.group(1)) if match else 0
        wanted = _llama_quantize_type(out_type, _kind(name, tied), i_layer, n_layer, n)
    else:
        wanted = mix.base
    if not _fits(wanted, n):
        wanted = _FALLBACK.get(wanted, wanted)
    return wanted if _fits(wanted, n) else F16

