"""Model: the low-level Python API of the forward pass. Load a GGUF, evaluate token ids at a
position, read the logits, truncate or reset the KV cache, see sizes and timings.

    with Model("phi4-mini-q4_0.gguf", n_ctx=4096) as model:
        logits = model.eval(prompt_ids)            # (n_vocab,) logits of the last token
        logits = model.eval([next_id])             # appended at model.n_past
        model.truncate(len(prompt_ids))            # O(1)

The weights stay in the file's memory map (the C core gets pointers into it); the KV cache and
activations are allocated once, when the model is created, after checking that they fit in the
memory available. Logits are written by the C core straight into the numpy array returned (or
into `out`), with no copy.

LongRoPE (Phi-3 long-context models): the logits of a sequence are those transformers computes
for the whole sequence, whose factor set is short up to `original_context_length` tokens and long
beyond. When a call makes the sequence cross that length (either way), the cache is recomputed
from its tokens (`longrope_switch="reprefill"`, the default, exact; that call then costs a prefill
of the whole sequence) or its keys are re-rotated in place (`"rerotate"`, no recomputation, close
but not identical: see csrc/model.c).

Not here: tokenization, sampling, generation loops (they build on this), GGUF parsing
(gguf_reader) or reading the hyperparameters (model_file).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import numpy as np

from ._native import check, ffi, lib
from .model_file import HParams, ModelFile
from .threadpool import ThreadPool

DEFAULT_N_CTX = 4096
# Tokens per forward step of a long prompt: activations of 256 tokens of Phi-4-mini are ~80 MB.
DEFAULT_N_BATCH = 256
DEFAULT_KV_TYPE = "f16"
DEFAULT_LONGROPE_SWITCH = "reprefill"
# Q4_0/Q8_0/Q4_K/Q5_K/Q6_K matrices are copied into the kernels' packed layout by a thread the model starts at
# create, evals meanwhile packing each group on the fly with the same result (see pyphi.h): prefill several times
# faster, decode closer to memory bandwidth, for anonymous memory of their size.
# Only AVX-512 has a SIMD packed kernel so far (AVX2 runs the scalar twin there), so elsewhere
# the default keeps ggml's layout and the ISA's own tiles.
DEFAULT_PACK_WEIGHTS = lib.pyphi_isa_best() in (lib.PYPHI_ISA_AVX512, lib.PYPHI_ISA_AVX512BF16)
KV_TYPES = {"f16": lib.PYPHI_TYPE_F16, "f32": lib.PYPHI_TYPE_F32}
LONGROPE_SWITCHES = {"reprefill": lib.PYPHI_LONGROPE_REPREFILL, "rerotate": lib.PYPHI_LONGROPE_REROTATE}
NUMERICS = {"pyphi": lib.PYPHI_NUMERICS_PYPHI, "ggml": lib.PYPHI_NUMERICS_GGML}
# llama.cpp's n_ubatch: numerics="ggml" splits a prompt where llama.cpp does (pyphi.h)
GGML_N_BATCH = 512
GGML_TYPES = ("Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
GIB = 1 << 30
_MEMINFO = "/proc/meminfo"


class ContextTooLargeError(MemoryError):
    """The KV cache and activations for the requested n_ctx would not fit in available memory."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Memory of a model at one n_ctx, in bytes. Weights are mapped from the file, not allocated;
    packed copies of the Q4_0/Q8_0/K-quant matrices (pack_weights) are."""

    weights_bytes: int
    kv_bytes: int
    scratch_bytes: int
    packed_bytes: int = 0

    @property
    def weights_gib(self) -> float:
        return self.weights_bytes / GIB

    @property
    def kv_gib(self) -> float:
        return self.kv_bytes / GIB

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.scratch_bytes + self.packed_bytes

    def __str__(self) -> str:
        return (f"weights {self.weights_gib:.2f} GiB + KV cache {self.kv_gib:.2f} GiB + "
                f"activations {self.scratch_bytes / GIB:.2f} GiB")


@dataclasses.dataclass
class Timings:
    """Totals since the model was created, and the last eval call."""

    n_evals: int = 0
    n_tokens: int = 0
    seconds: float = 0.0
    last_tokens: int = 0
    last_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else 0.0


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), or None."""
    try:
        with open(_MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _params(hparams: HParams, n_ctx: int, n_batch: int, kv_type: str, longrope_switch: str,
            pack_weights: bool = DEFAULT_PACK_WEIGHTS, numerics: str = "pyphi"):
    if numerics not in NUMERICS:
        raise ValueError(f"numerics {numerics!r}: expected one of {', '.join(NUMERICS)}")
    if kv_type not in KV_TYPES:
        raise ValueError(f"kv_type {kv_type!r}: expected one of {', '.join(KV_TYPES)}")
    if longrope_switch not in LONGROPE_SWITCHES:
        raise ValueError(f"longrope_switch {longrope_switch!r}: expected one of {', '.join(LONGROPE_SWITCHES)}")
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or not 1 <= n_ctx <= hparams.n_ctx_train:
        raise ValueError(f"n_ctx {n_ctx!r}: expected 1 .. {hparams.n_ctx_train} (the model's context length)")
    if not isinstance(n_batch, int) or isinstance(n_batch, bool) or n_batch < 1:
        raise ValueError(f"n_batch {n_batch!r}: expected a positive int")
    p = ffi.new("struct pyphi_model_params *")
    p.n_ctx, p.n_batch = n_ctx, n_batch
    p.kv_type, p.longrope_switch = KV_TYPES[kv_type], LONGROPE_SWITCHES[longrope_switch]
    p.pack_weights = bool(pack_weights)
    p.numerics = NUMERICS[numerics]
    return p


def _sizes(model_file: ModelFile, params) -> Sizes:
    s = ffi.new("struct pyphi_model_sizes *")
    check(lib.pyphi_model_sizes(model_file.desc, params, s), f"{model_file.path}: model sizes")
    return Sizes(s.weights_bytes, s.kv_bytes, s.scratch_bytes, s.packed_bytes)


def default_n_ctx(hparams: HParams) -> int:
    """DEFAULT_N_CTX, or the model's context length if that is shorter."""
    return min(DEFAULT_N_CTX, hparams.n_ctx_train)


def model_sizes(path, n_ctx: int | None = None, *, kv_type: str = DEFAULT_KV_TYPE,
                n_batch: int = DEFAULT_N_BATCH) -> Sizes:
    """What loading `path` at `n_ctx` (default: default_n_ctx) would take, without allocating
    anything."""
    with ModelFile(path) as mf:
        n_ctx = default_n_ctx(mf.hparams) if n_ctx is None else n_ctx
        return _sizes(mf, _params(mf.hparams, n_ctx, n_batch, kv_type, DEFAULT_LONGROPE_SWITCH))


def _check_memory(path: str, n_ctx: int, kv_type: str, sizes: Sizes) -> None:
    """The weights must stay resident to run at speed, so the cache and activations have to fit
    in what is available besides them (page cache holding the weights counts as available)."""
    available = available_memory_bytes()
    if available is None:
        return
    # packed matrices are allocated, and their file pages released: they move from one side to the other
    needed = sizes.kv_bytes + sizes.scratch_bytes + sizes.packed_bytes
    if needed > available - (sizes.weights_bytes - sizes.packed_bytes):
        raise ContextTooLargeError(
            f"{path}: n_ctx={n_ctx} needs {sizes.kv_gib:.2f} GiB of {kv_type} KV cache and "
            f"{sizes.scratch_bytes / GIB:.2f} GiB of activations besides {sizes.weights_gib:.2f} GiB "
            f"of weights, but only {available / GIB:.2f} GiB of memory is available; use a smaller n_ctx"
        )


class Model:
    """A loaded model with its KV cache. Use as a context manager or call close().

    n_threads: threads of the model's pool (default: the physical cores we may run on);
    n_ctx: cache capacity in tokens (default 4096, or the model's context length if shorter; at
    most the model's context length);
    kv_type: "f16" (default) or "f32"; n_batch: tokens per forward step of a long prompt;
    longrope_switch: "reprefill" (default) or "rerotate", see the module docstring;
    pack_weights: copy Q4_0/Q8_0/K-quant matrices into the packed layout, in the background from
    load on, with the same logits before and after (default: where the CPU has a SIMD packed
    kernel, AVX-512);
    numerics: "pyphi" (default) or "ggml", llama.cpp's CPU arithmetic operation for operation, whose
    logits equal llama.cpp's bit for bit (flash attention off) for files of Q4_1/Q8_0 matrices
    without LongRoPE, such as SmolLM2's, at a fraction of the speed; it implies an f16 cache, no
    packing and n_batch 512 (llama.cpp's n_ubatch) unless given.
    Calls from several threads are serialised (the C model has one cache and one set of
    activation buffers).
    """

    def __init__(self, path, *, n_ctx: int | None = None, n_threads: int | None = None,
                 kv_type: str = DEFAULT_KV_TYPE, n_batch: int | None = None,
                 longrope_switch: str = DEFAULT_LONGROPE_SWITCH, check_memory: bool = True,
                 pack_weights: bool | None = None, numerics: str = "pyphi"):
        self._handle = None
        self._lock = threading.Lock()
        self._file = ModelFile(path)
        try:
            self.path = self._file.path
            self.hparams = self._file.hparams
            n_ctx = default_n_ctx(self.hparams) if n_ctx is None else n_ctx
            self.n_ctx, self.kv_type, self.longrope_switch = n_ctx, kv_type, longrope_switch
            self.numerics = numerics
            ggml = numerics == "ggml"
            if ggml:
                self._check_ggml(kv_type, pack_weights)
            n_batch = (GGML_N_BATCH if ggml else DEFAULT_N_BATCH) if n_batch is None else n_batch
            pack_weights = (DEFAULT_PACK_WEIGHTS and not ggml) if pack_weights is None else pack_weights
            params = _params(self.hparams, n_ctx, n_batch, kv_type, longrope_switch, pack_weights,
                             numerics)
            self.sizes = _sizes(self._file, params)
            if check_memory:
                _check_memory(self.path, n_ctx, kv_type, self.sizes)
            self.pool = ThreadPool(n_threads)
            out = ffi.new("pyphi_model **")
            check(lib.pyphi_model_create(self._file.desc, params, out), f"{self.path}: create model")
            # the destructor holds the file: the model's packing thread reads its mapping, which must
            # outlive the model in whatever order the two are collected
            self._handle = ffi.gc(out[0], lambda handle, file=self._file: lib.pyphi_model_free(handle))
        except BaseException:
            self._file.close()
            raise
        self.timings = Timings()

    def _check_ggml(self, kv_type: str, pack_weights: bool | None) -> None:
        """What numerics="ggml" reproduces (pyphi.h), as one-line errors naming the file."""
        where = f"{self.path}: numerics='ggml'"
        if kv_type != "f16" or pack_weights:
            raise ValueError(f"{where} needs kv_type='f16' and pack_weights off (llama.cpp's cache, unpacked weights)")
        for name, type_name in self._file.matrix_types():
            if type_name not in GGML_TYPES:
                raise ValueError(f"{where} computes {', '.join(GGML_TYPES)} matrices; {name} is {type_name}")
            rows = self._file.gguf.tensors[name].shape[1]
            if type_name == "Q4_K" and rows % 8:
                raise ValueError(f"{where} computes Q4_K matrices of rows in 8s (llama.cpp's repacked "
                                 f"layout); {name} has {rows} rows")

    # ---- state ----

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError("Model is closed")
        return self._handle

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    @property
    def n_past(self) -> int:
        """Tokens in the cache: the next eval appends at this position."""
        return lib.pyphi_model_n_past(self.handle)

    @property
    def rope_long(self) -> bool:
        """Whether the cached keys use the long LongRoPE factors."""
        return bool(lib.pyphi_model_rope_long(self.handle))

    @property
    def rope_switches(self) -> int:
        """How many times a LongRoPE factor change re-prefilled or re-rotated the cache."""
        return lib.pyphi_model_rope_switches(self.handle)

    @property
    def packed(self) -> bool:
        """Whether the packed copies of the weights (pack_weights) are complete. Until then evals
        pack each matrix group on the fly, which is slower but gives the same logits."""
        return bool(check(lib.pyphi_model_packed(self.handle), "packed"))

    # ---- evaluation ----

    def eval(self, tokens, pos: int | None = None, *, logits: str | int | None = "last",
             out: np.ndarray | None = None) -> np.ndarray | None:
        """Run `tokens` (ids) at positions pos, pos + 1, ... (default: n_past, i.e. append; a pos
        below n_past first truncates the cache there) and return logits as float32:
        logits="last" -> (n_vocab,); "all" -> (n_tokens, n_vocab); an int k -> the last k tokens'
        (k, n_vocab); None -> nothing. `out`, a C-contiguous float32 array of that shape, is
        filled instead of a new array."""
        ids = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)
        n = ids.size
        if n == 0:
            raise ValueError("eval: no tokens")
        n_logits, shape = self._logits_shape(logits, n)
        if out is None and n_logits:
            out = np.empty(shape, dtype=np.float32)
        elif out is not None and (out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous):
            raise ValueError(f"eval: out must be a C-contiguous float32 array of shape {shape}")
        logits_ptr = ffi.from_buffer("float[]", out, require_writable=True) if n_logits else ffi.NULL
        with self._lock:
            pos = self.n_past if pos is None else pos
            self._check_eval(ids, pos)
            start = time.perf_counter()
            check(lib.pyphi_model_eval(self.handle, self.pool.handle, ffi.from_buffer("int32_t[]", ids), n,
                                       pos, logits_ptr, n_logits), "eval")
            self._record(n, time.perf_counter() - start)
        return out if n_logits else None

    def _logits_shape(self, logits, n: int) -> tuple[int, tuple[int, ...]]:
        if logits is None:
            return 0, ()
        if logits == "last":
            return 1, (self.n_vocab,)
        if logits == "all":
            return n, (n, self.n_vocab)
        if isinstance(logits, int) and not isinstance(logits, bool) and 1 <= logits <= n:
            return logits, (logits, self.n_vocab)
        raise ValueError(f"eval: logits={logits!r}: expected 'last', 'all', None or 1 .. {n}")

    def _check_eval(self, ids: np.ndarray, pos: int) -> None:
        """The C core checks these too; here they get messages."""
        n_past = self.n_past
        if not isinstance(pos, (int, np.integer)) or not 0 <= pos <= n_past:
            raise ValueError(f"eval: pos {pos!r} must be in 0 .. n_past ({n_past})")
        if pos + ids.size > self.n_ctx:
            raise ValueError(f"eval: {ids.size} tokens at position {pos} do not fit in n_ctx {self.n_ctx}")
        bad = (ids < 0) | (ids >= self.n_vocab)
        if bad.any():
            raise ValueError(f"eval: token id {int(ids[bad][0])} is not in 0 .. {self.n_vocab - 1}")

    def _record(self, n: int, seconds: float) -> None:
        t = self.timings
        t.n_evals += 1
        t.n_tokens += n
        t.seconds += seconds
        t.last_tokens, t.last_seconds = n, seconds

    def truncate(self, n: int) -> None:
        """Keep the first n positions of the cache (O(1))."""
        with self._lock:
            if not 0 <= n <= self.n_past:
                raise ValueError(f"truncate: n {n!r} must be in 0 .. n_past ({self.n_past})")
            check(lib.pyphi_model_truncate(self.handle, n), "truncate")

    def reset(self) -> None:
        """Empty the cache."""
        self.truncate(0)

    # ---- lifetime ----

    def close(self) -> None:
        """Free the cache and the pool and unmap the file (idempotent)."""
        with self._lock:
            if self._handle is not None:
                ffi.release(self._handle)
                self._handle = None
                self.pool.close()
                self._file.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Model({os.path.basename(self.path)!r}, n_ctx={self.n_ctx}, kv_type={self.kv_type!r}, "
                f"{self.pool.n_threads} threads)")
