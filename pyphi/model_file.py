"""A model GGUF -> hyperparameters and the C core's model description (struct pyphi_model_desc).

`ModelFile(path)` opens the GGUF with the validated reader, reads the hyperparameters from the
architecture's keys (`phi3.*` or `llama.*`: nothing about the sizes is hard-coded, so Phi-3-mini,
Phi-3.5-mini, SmolLM2 or TinyLlama GGUFs load too), checks that every tensor the forward pass
needs is there with the shape and a type the C core computes, and builds a `pyphi_model_desc`
whose tensor pointers point into the file's memory map: the weights are never copied. Any problem
raises `ModelFileError`, one line naming the file and the key or tensor.

Files we read: ours (`pyphi.convert`) and llama.cpp's (convert_hf_to_gguf.py; see the project
notes SPEC §5). The architectures differ only in what `ARCHITECTURES` lists:
- `phi3`: fused `attn_qkv` and `ffn_up` (gate then up), NeoX RoPE pairs, optional global
  `rope_factors_{long,short}.weight` (n_rot / 2 values, F32: LongRoPE);
- `llama`: separate `attn_q/k/v` and `ffn_gate`/`ffn_up`, whose Q/K rows llama.cpp's converter
  permuted for the adjacent RoPE pairing (pyphi.h pyphi_rope_pairing), no LongRoPE, and the
  optional `rope_freqs.weight` (Llama 3.1's per-frequency divisors, applied as llama.cpp does:
  theta / factor). No biases, no mixture of experts, no other RoPE scaling: such files are
  refused by name.
Both: no `output.weight` when the head is tied to `token_embd`.

What this is not: the model's state or its evaluation (model.py), or a GGUF parser (gguf_reader).
"""

from __future__ import annotations

import dataclasses
import os

from ._native import ffi, lib
from .gguf_format import GGML_TYPE_NAMES, ValueType
from .gguf_reader import GGUFError, GGUFFile


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the forward pass needs to know of a `general.architecture` beyond its sizes."""

    fused: bool  # attn_qkv + ffn_up (gate | up), else attn_q/k/v + ffn_gate, ffn_up
    rope_pairing: int  # enum pyphi_rope_pairing
    longrope: bool  # rope_factors_{short,long}.weight (phi3), else rope_freqs.weight (llama)
    queries_scaled: bool  # llama.cpp scales the queries, not the scores (pyphi.h; numerics="ggml")


ARCHITECTURES = {
    "phi3": Architecture(fused=True, rope_pairing=lib.PYPHI_ROPE_NEOX, longrope=True, queries_scaled=True),
    "llama": Architecture(fused=False, rope_pairing=lib.PYPHI_ROPE_ADJACENT, longrope=False,
                          queries_scaled=False),
}
DEFAULT_ROPE_BASE = 10000.0  # Phi3Config rope_theta default, and llama.cpp's
# The weight types the C core computes: those it stores and has a dot product for.
COMPUTED_TYPES = {
    type_id: name for type_id, name in GGML_TYPE_NAMES.items()
    if lib.pyphi_type_block_values(type_id) > 0 and lib.pyphi_vec_dot_type(type_id) >= 0
}
_INT_TYPES = (ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16, ValueType.UINT32,
              ValueType.INT32, ValueType.UINT64, ValueType.INT64)
_FLOAT_TYPES = (ValueType.FLOAT32, ValueType.FLOAT64)


class ModelFileError(GGUFError):
    """A well-formed GGUF that is not a model pyphi can run (a missing key or tensor, a wrong
    shape, a type the C core does not compute). One line, naming the file."""


@dataclasses.dataclass(frozen=True)
class HParams:
    """The hyperparameters of a model file, as the forward pass uses them."""

    arch: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_rot: int
    n_ctx_train: int  # {arch}.context_length
    n_ctx_orig: int  # LongRoPE switch point: {arch}.rope.scaling.original_context_length, or 0
    sliding_window: int
    rms_eps: float
    rope_base: float
    rope_attn_factor: float
    rope_pairing: int  # enum pyphi_rope_pairing
    has_longrope: bool  # both factor tensors present
    tied_output: bool


class ModelFile:
    """An open model GGUF: `hparams`, `desc` (a cffi `struct pyphi_model_desc *`), `weights_type`
    (the ggml type name of most matrices). Keep it open while a model built from `desc` lives."""

    def __init__(self, path: str | os.PathLike[str]):
        self.gguf = GGUFFile(path)
        self.path = self.gguf.path
        try:
            self.hparams = self._read_hparams()
            self._keep: list = []  # cffi buffers and arrays that must outlive desc
            self.desc = self._build_desc()
        except BaseException:
            self.gguf.close()
            raise

    def close(self) -> None:
        self.desc = None
        self._keep = []
        self.gguf.close()

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- metadata ----

    def _error(self, what: str) -> ModelFileError:
        return ModelFileError(f"{self.path}: {what}")

    def _number(self, key: str, types, kind: str, default=None):
        if key not in self.gguf.metadata:
            if default is None:
                raise self._error(f"key {key!r} is missing")
            return default
        vtype = self.gguf.value_type(key)
        if vtype not in types:
            raise self._error(f"key {key!r} has type {vtype.name}, expected {kind}")
        return self.gguf.metadata[key]

    def _int(self, key: str, default: int | None = None, minimum: int = 1) -> int:
        value = int(self._number(key, _INT_TYPES, "an integer", default))
        if value < minimum:
            raise self._error(f"key {key!r} is {value}, expected at least {minimum}")
        return value

    def _float(self, key: str, default: float | None = None) -> float:
        value = float(self._number(key, _FLOAT_TYPES, "a float", default))
        if not value > 0:
            raise self._error(f"key {key!r} is {value}, expected a positive number")
        return value

    def _read_hparams(self) -> HParams:
        arch_key = "general.architecture"
        if arch_key not in self.gguf.metadata:
            raise self._error(f"key {arch_key!r} is missing")
        arch = self.gguf.metadata[arch_key]
        if arch not in ARCHITECTURES:
            raise self._error(f"key {arch_key!r} is {arch!r}; pyphi runs {', '.join(ARCHITECTURES)}")
        self._check_unsupported(arch)
        n_embd = self._int(f"{arch}.embedding_length")
        n_head = self._int(f"{arch}.attention.head_count")
        n_head_kv = self._int(f"{arch}.attention.head_count_kv", default=n_head)
        if n_embd % n_head:
            raise self._error(f"key '{arch}.embedding_length' {n_embd} is not a multiple of "
                              f"'{arch}.attention.head_count' {n_head}")
        if n_head % n_head_kv:
            raise self._error(f"key '{arch}.attention.head_count' {n_head} is not a multiple of "
                              f"'{arch}.attention.head_count_kv' {n_head_kv}")
        head_dim = n_embd // n_head  # HF Phi3Attention / LlamaAttention, llama.cpp's graphs
        for key in (f"{arch}.attention.key_length", f"{arch}.attention.value_length"):
            if self._int(key, default=head_dim) != head_dim:
                raise self._error(f"key {key!r} is {self.gguf.metadata[key]}: heads of other than "
                                  f"embedding_length / head_count ({head_dim}) values are not supported")
        n_rot = self._int(f"{arch}.rope.dimension_count", default=head_dim)
        if n_rot % 2 or n_rot > head_dim:
            raise self._error(f"key '{arch}.rope.dimension_count' is {n_rot}, expected an even "
                              f"number up to the head size {head_dim}")
        n_ctx_train = self._int(f"{arch}.context_length")
        embd = self._tensor_info("token_embd.weight")
        has_long = "rope_factors_long.weight" in self.gguf.tensors
        has_short = "rope_factors_short.weight" in self.gguf.tensors
        return HParams(
            arch=arch,
            n_vocab=embd.shape[1] if len(embd.shape) == 2 else 0,
            n_embd=n_embd,
            n_layer=self._int(f"{arch}.block_count"),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ff=self._int(f"{arch}.feed_forward_length"),
            n_rot=n_rot,
            n_ctx_train=n_ctx_train,
            n_ctx_orig=self._int(f"{arch}.rope.scaling.original_context_length", default=0, minimum=0),
            sliding_window=self._int(f"{arch}.attention.sliding_window", default=0, minimum=0),
            rms_eps=self._float(f"{arch}.attention.layer_norm_rms_epsilon"),
            rope_base=self._float(f"{arch}.rope.freq_base", default=DEFAULT_ROPE_BASE),
            rope_attn_factor=self._float(f"{arch}.rope.scaling.attn_factor", default=1.0),
            rope_pairing=ARCHITECTURES[arch].rope_pairing,
            has_longrope=ARCHITECTURES[arch].longrope and has_long and has_short,
            tied_output="output.weight" not in self.gguf.tensors,
        )

    def _check_unsupported(self, arch: str) -> None:
        """Refuses, by name, what a file of a known architecture may hold that the forward pass
        does not compute (llama.cpp's llama graph reads these as optional)."""
        experts = self.gguf.metadata.get(f"{arch}.expert_count", 0)
        if isinstance(experts, int) and experts > 0:
            raise self._error(f"key '{arch}.expert_count' is {experts}: mixture-of-experts models are not supported")
        scaling = self.gguf.metadata.get(f"{arch}.rope.scaling.type", "none")
        if not ARCHITECTURES[arch].longrope and scaling != "none":
            raise self._error(f"key '{arch}.rope.scaling.type' is {scaling!r}: this RoPE scaling is not supported")
        bias = next((name for name in self.gguf.tensors if name.endswith(".bias")), None)
        if bias is not None:
            raise self._error(f"tensor {bias!r}: biases are not supported")

    # ---- tensors ----

    def _tensor_info(self, name: str):
        info = self.gguf.tensors.get(name)
        if info is None:
            raise self._error(f"tensor {name!r} is missing")
        return info

    def _tensor(self, name: str, shape: tuple[int, ...], norm: bool = False):
        """A filled `struct pyphi_tensor` for `name`, which must have ggml shape `shape`."""
        info = self._tensor_info(name)
        if info.shape != shape:
            raise self._error(f"tensor {name!r} has shape {list(info.shape)}, expected {list(shape)}")
        type_name = GGML_TYPE_NAMES.get(info.type, str(info.type))
        if norm and info.type != lib.PYPHI_TYPE_F32:
            raise self._error(f"tensor {name!r} has type {type_name}, expected F32")
        if info.type not in COMPUTED_TYPES:
            raise self._error(f"tensor {name!r} has type {type_name}, which pyphi does not compute "
                              f"({', '.join(COMPUTED_TYPES.values())})")
        alignment = 4 if info.type == lib.PYPHI_TYPE_F32 else 2
        if info.offset % alignment:
            raise self._error(f"tensor {name!r} data at offset {info.offset} is not "
                              f"{alignment}-byte aligned")
        data = ffi.from_buffer(self.gguf.tensor_data(name))
        self._keep.append(data)
        t = ffi.new("struct pyphi_tensor *")
        t.type, t.data = info.type, data
        t.ne0, t.ne1 = shape[0], (shape[1] if len(shape) == 2 else 1)
        return t[0]

    def _factors(self, name: str, n_rot: int):
        tensor = self._tensor(name, (n_rot // 2,), norm=True)
        return ffi.cast("const float *", tensor.data)

    def _build_desc(self):
        h = self.hparams
        q_dim, kv_dim = h.n_head * h.head_dim, h.n_head_kv * h.head_dim
        arch = ARCHITECTURES[h.arch]
        d = ffi.new("struct pyphi_model_desc *")
        for field in ("n_vocab", "n_embd", "n_layer", "n_head", "n_head_kv", "head_dim", "n_ff",
                      "n_rot", "rope_pairing", "n_ctx_train", "n_ctx_orig", "sliding_window",
                      "rms_eps", "rope_base", "rope_attn_factor"):
            setattr(d, field, getattr(h, field))
        d.queries_scaled = arch.queries_scaled
        d.tok_embd = self._tensor("token_embd.weight", (h.n_embd, h.n_vocab))
        d.output_norm = self._tensor("output_norm.weight", (h.n_embd,), norm=True)
        d.output = d.tok_embd if h.tied_output else self._tensor("output.weight", (h.n_embd, h.n_vocab))
        short = "rope_factors_short.weight" if arch.longrope else "rope_freqs.weight"
        if short in self.gguf.tensors:
            d.rope_factors_short = self._factors(short, h.n_rot)
        if h.has_longrope:
            d.rope_factors_long = self._factors("rope_factors_long.weight", h.n_rot)
        layers = ffi.new("struct pyphi_layer_weights[]", h.n_layer)
        for i in range(h.n_layer):
            L = layers[i]
            L.attn_norm = self._tensor(f"blk.{i}.attn_norm.weight", (h.n_embd,), norm=True)
            if arch.fused:
                L.wqkv = self._tensor(f"blk.{i}.attn_qkv.weight", (h.n_embd, q_dim + 2 * kv_dim))
            else:
                L.wq = self._tensor(f"blk.{i}.attn_q.weight", (h.n_embd, q_dim))
                L.wk = self._tensor(f"blk.{i}.attn_k.weight", (h.n_embd, kv_dim))
                L.wv = self._tensor(f"blk.{i}.attn_v.weight", (h.n_embd, kv_dim))
            L.wo = self._tensor(f"blk.{i}.attn_output.weight", (q_dim, h.n_embd))
            L.ffn_norm = self._tensor(f"blk.{i}.ffn_norm.weight", (h.n_embd,), norm=True)
            if arch.fused:
                L.ffn_gate_up = self._tensor(f"blk.{i}.ffn_up.weight", (h.n_embd, 2 * h.n_ff))
            else:
                L.ffn_gate = self._tensor(f"blk.{i}.ffn_gate.weight", (h.n_embd, h.n_ff))
                L.ffn_up = self._tensor(f"blk.{i}.ffn_up.weight", (h.n_embd, h.n_ff))
            L.ffn_down = self._tensor(f"blk.{i}.ffn_down.weight", (h.n_ff, h.n_embd))
        d.layers = layers
        self._keep.append(layers)
        return d

    def matrix_types(self):
        """(name, ggml type name) of every matrix the forward pass multiplies by: the layers' 2-D
        tensors and the output head (the embedding, when tied)."""
        head = "token_embd.weight" if self.hparams.tied_output else "output.weight"
        for name, info in self.gguf.tensors.items():
            if name == head or (name.startswith("blk.") and len(info.shape) == 2):
                yield name, GGML_TYPE_NAMES.get(info.type, str(info.type))

    @property
    def weights_type(self) -> str:
        """The ggml type name of the first layer's Q (or QKV) matrix (the file's main weight type)."""
        name = "blk.0.attn_qkv.weight" if ARCHITECTURES[self.hparams.arch].fused else "blk.0.attn_q.weight"
        return GGML_TYPE_NAMES[self.gguf.tensors[name].type]

