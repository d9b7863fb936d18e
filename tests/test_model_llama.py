"""The llama architecture: RoPE pairings, llama GGUFs (separate projections, permuted Q/K rows)
and what such files may hold that pyphi refuses.

References: the RoPE op against numpy (float64 from the same float32 angles); the adjacent
pairing against the NeoX one through llama.cpp's row permutation (convert_hf_to_gguf.py
LlamaModel.permute), bit for bit; a llama GGUF against the phi3 GGUF of the same weights. The
forward pass against transformers' LlamaForCausalLM on a file written by llama.cpp's own
converter is in test_model_llama_peer.py; the real SmolLM2 in test_smollm2.py.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from test_model_file import expect_error, without
from test_model_file import write as write_gguf

from pyphi._native import ffi, lib
from pyphi.model import Model

N_VOCAB, N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER = 96, 64, 4, 2, 96, 2
HEAD_DIM = N_EMBD // N_HEAD
Q_DIM, KV_DIM = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM


def rope(x: np.ndarray, n_rot: int, pairing: int, pos: int, base: float, factors=None) -> np.ndarray:
    """pyphi_rope on a copy of x (n_heads, head_dim) float32."""
    out = np.ascontiguousarray(x, dtype=np.float32).copy()
    f = ffi.NULL if factors is None else ffi.cast("const float *", ffi.from_buffer(factors))
    status = lib.pyphi_rope(ffi.cast("float *", ffi.from_buffer(out)), out.shape[0], out.shape[1], n_rot,
                            pairing, pos, base, f)
    assert status == lib.PYPHI_OK
    return out


def rope_reference(x: np.ndarray, n_rot: int, pairing: int, pos: int, base: float, factors=None) -> np.ndarray:
    """The rotation written out: angles as float32 products pos * inv_freq[i] (inv_freq[i] =
    1 / (factor_i * base^(2i / n_rot)), float32 as transformers computes it), the rotation of
    each pair (a, b) by its angle in float64."""
    half = n_rot // 2
    exponent = (np.arange(half, dtype=np.float32) * 2) / np.float32(n_rot)
    power = np.power(np.float64(base), exponent.astype(np.float64)).astype(np.float32)
    factor = np.ones(half, np.float32) if factors is None else np.asarray(factors, np.float32)
    inv_freq = np.float32(1) / (factor * power)
    theta = (np.float32(pos) * inv_freq).astype(np.float64)
    c, s = np.cos(theta), np.sin(theta)
    if pairing == lib.PYPHI_ROPE_NEOX:
        ia, ib = np.arange(half), np.arange(half) + half
    else:
        ia, ib = 2 * np.arange(half), 2 * np.arange(half) + 1
    x = x.astype(np.float64)
    out = x.copy()
    out[:, ia] = x[:, ia] * c - x[:, ib] * s
    out[:, ib] = x[:, ib] * c + x[:, ia] * s
    return out


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permutation of Q/K rows (convert_hf_to_gguf.py LlamaModel.permute): in each
    head, row j * head_dim/2 + i moves to 2i + j, so NeoX pairs become adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("pairing", [0, 1])
@pytest.mark.parametrize(("head_dim", "n_rot"), [(16, 16), (16, 12), (64, 64), (96, 96), (128, 64)])
def test_rope_op_matches_the_formula(pairing, head_dim, n_rot):
    rng = np.random.default_rng(head_dim + n_rot + pairing)
    x = rng.standard_normal((3, head_dim)).astype(np.float32)
    factors = rng.uniform(1, 8, n_rot // 2).astype(np.float32)
    for pos, base, f in [(0, 10000.0, None), (1, 10000.0, None), (37, 100000.0, None), (4095, 500000.0, None),
                         (8191, 10000.0, factors)]:
        ours = rope(x, n_rot, pairing, pos, base, f)
        ref = rope_reference(x, n_rot, pairing, pos, base, f)
        # float32 products and one rounding of each output: a few ulps of the pair's magnitude;
        # cos/sin of the same float32 angle are correctly rounded in the op (1/2 ulp each)
        half = n_rot // 2
        ia = np.arange(half) if pairing == 0 else 2 * np.arange(half)
        ib = ia + half if pairing == 0 else ia + 1
        scale = np.zeros_like(x, dtype=np.float64)
        scale[:, ia] = scale[:, ib] = np.abs(x[:, ia]).astype(np.float64) + np.abs(x[:, ib])
        bound = 4 * np.finfo(np.float32).eps * scale
        assert (np.abs(ours - ref) <= bound).all(), (pos, base)
        np.testing.assert_array_equal(ours[:, n_rot:], x[:, n_rot:])  # dims past n_rot pass through


def test_adjacent_pairing_is_neox_on_permuted_rows():
    """llama.cpp permutes HF's Q/K rows so that its normal (adjacent) rope mode computes HF's
    rotate_half rotation: rope_adjacent(P x) == P rope_neox(x), the same float operations."""
    rng = np.random.default_rng(7)
    for n_head, head_dim in [(9, 64), (4, 16), (2, 128)]:
        x = rng.standard_normal((n_head, head_dim)).astype(np.float32)
        flat = x.reshape(n_head * head_dim, 1)
        px = permute_rows(flat, n_head).reshape(n_head, head_dim)
        for pos in (0, 5, 1000):
            neox = rope(x, head_dim, lib.PYPHI_ROPE_NEOX, pos, 100000.0)
            adjacent = rope(px, head_dim, lib.PYPHI_ROPE_ADJACENT, pos, 100000.0)
            expected = permute_rows(neox.reshape(n_head * head_dim, 1), n_head).reshape(n_head, head_dim)
            np.testing.assert_array_equal(adjacent, expected)


def test_rope_op_rejects_bad_arguments():
    x = np.zeros((1, 16), np.float32)
    buf = ffi.cast("float *", ffi.from_buffer(x))
    assert lib.pyphi_rope(buf, 1, 16, 16, 2, 0, 10000.0, ffi.NULL) == lib.PYPHI_E_SHAPE  # pairing
    assert lib.pyphi_rope(buf, 1, 16, 18, 0, 0, 10000.0, ffi.NULL) == lib.PYPHI_E_SHAPE  # n_rot > head_dim
    assert lib.pyphi_rope(buf, 1, 16, 15, 0, 0, 10000.0, ffi.NULL) == lib.PYPHI_E_SHAPE  # odd n_rot
    assert lib.pyphi_rope(ffi.NULL, 1, 16, 16, 0, 0, 10000.0, ffi.NULL) == lib.PYPHI_E_ARG


# ---- llama GGUFs ------------------------------------------------------------------------------


def keys(arch: str) -> dict:
    return {
        f"{arch}.context_length": (gguf.GGUFValueType.UINT32, 2048),
        f"{arch}.embedding_length": (gguf.GGUFValueType.UINT32, N_EMBD),
        f"{arch}.feed_forward_length": (gguf.GGUFValueType.UINT32, N_FF),
        f"{arch}.block_count": (gguf.GGUFValueType.UINT32, N_LAYER),
        f"{arch}.attention.head_count": (gguf.GGUFValueType.UINT32, N_HEAD),
        f"{arch}.attention.head_count_kv": (gguf.GGUFValueType.UINT32, N_HEAD_KV),
        f"{arch}.attention.layer_norm_rms_epsilon": (gguf.GGUFValueType.FLOAT32, 1e-5),
        f"{arch}.rope.dimension_count": (gguf.GGUFValueType.UINT32, HEAD_DIM),
        f"{arch}.rope.freq_base": (gguf.GGUFValueType.FLOAT32, 100000.0),
    }


def phi3_tensors() -> dict[str, np.ndarray]:
    """A phi3 model with full rotary and no LongRoPE: the llama graph with fused projections.
    numpy shapes (rows, row length)."""
    rng = np.random.default_rng(3)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    out = {"token_embd.weight": w(N_VOCAB, N_EMBD), "output_norm.weight": 1 + w(N_EMBD)}
    for i in range(N_LAYER):
        out |= {f"blk.{i}.attn_norm.weight": 1 + w(N_EMBD), f"blk.{i}.attn_qkv.weight": w(Q_DIM + 2 * KV_DIM, N_EMBD),
                f"blk.{i}.attn_output.weight": w(N_EMBD, Q_DIM), f"blk.{i}.ffn_norm.weight": 1 + w(N_EMBD),
                f"blk.{i}.ffn_up.weight": w(2 * N_FF, N_EMBD), f"blk.{i}.ffn_down.weight": w(N_EMBD, N_FF)}
    return out


def llama_tensors(phi3: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model as llama.cpp's converter writes a LlamaForCausalLM: q/k/v and gate/up
    split, the Q and K rows permuted for the adjacent pairing."""
    out = {}
    for name, array in phi3.items():
        if name.endswith("attn_qkv.weight"):
            prefix = name[: -len("attn_qkv.weight")]
            q, k, v = np.split(array, [Q_DIM, Q_DIM + KV_DIM])
            out |= {prefix + "attn_q.weight": permute_rows(q, N_HEAD), prefix + "attn_k.weight": permute_rows(k, N_HEAD_KV),
                    prefix + "attn_v.weight": v}
        elif name.endswith("ffn_up.weight"):
            prefix = name[: -len("ffn_up.weight")]
            gate, up = np.split(array, 2)
            out |= {prefix + "ffn_gate.weight": gate, prefix + "ffn_up.weight": up}
        else:
            out[name] = array
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(phi3 file, llama file) of the same weights."""
    root = tmp_path_factory.mktemp("llama-pair")
    phi3 = phi3_tensors()
    return (write_gguf(root / "phi3.gguf", keys("phi3"), phi3, arch="phi3"),
            write_gguf(root / "llama.gguf", keys("llama"), llama_tensors(phi3), arch="llama"))


def test_llama_file_computes_what_the_phi3_file_computes(pair):
    tokens = np.random.default_rng(0).integers(0, N_VOCAB, 40).astype(np.int32)
    outs = {}
    for path in pair:
        with Model(path, n_ctx=64, kv_type="f32") as model:
            outs[model.hparams.arch] = (model.hparams, model.eval(tokens, logits="all"))
    (h_phi3, phi3), (h_llama, llama) = outs["phi3"], outs["llama"]
    assert (h_llama.rope_pairing, h_phi3.rope_pairing) == (lib.PYPHI_ROPE_ADJACENT, lib.PYPHI_ROPE_NEOX)
    assert h_llama.n_rot == HEAD_DIM and h_llama.rope_base == 100000.0 and h_llama.tied_output
    # only the order of the q.k sums differs (the head dims are permuted): float32 rounding
    assert np.abs(llama - phi3).max() <= 1e-5 * np.abs(phi3).max()
    np.testing.assert_array_equal(llama.argmax(-1), phi3.argmax(-1))


def test_llama_decode_equals_prefill(pair):
    tokens = np.random.default_rng(1).integers(0, N_VOCAB, 12).astype(np.int32)
    with Model(pair[1], n_ctx=64) as model:
        full = model.eval(tokens, logits="all")
        model.truncate(0)
        steps = [model.eval(tokens[:5], logits="all")] + [model.eval([t])[None] for t in tokens[5:]]
    np.testing.assert_array_equal(np.concatenate(steps), full)


def test_llama_rope_freqs_divide_the_angles_as_phi3_short_factors_do(tmp_path):
    """Llama 3.1's rope_freqs.weight (llama.cpp: theta / factor) is the role phi3's
    rope_factors_short.weight plays without LongRoPE: the two files compute the same."""
    factors = np.linspace(1, 8, HEAD_DIM // 2, dtype=np.float32)
    phi3 = phi3_tensors()
    files = [write_gguf(tmp_path / "phi3.gguf", keys("phi3"), phi3 | {"rope_factors_short.weight": factors}, arch="phi3"),
             write_gguf(tmp_path / "llama.gguf", keys("llama"), llama_tensors(phi3) | {"rope_freqs.weight": factors},
                        arch="llama")]
    tokens = np.random.default_rng(2).integers(0, N_VOCAB, 40).astype(np.int32)
    logits = []
    for path in files:
        with Model(path, n_ctx=64, kv_type="f32") as model:
            logits.append(model.eval(tokens, logits="all"))
    with Model(write_gguf(tmp_path / "plain.gguf", keys("llama"), llama_tensors(phi3), arch="llama"), n_ctx=64,
               kv_type="f32") as model:
        plain = model.eval(tokens, logits="all")
    assert np.abs(logits[1] - logits[0]).max() <= 1e-5 * np.abs(logits[0]).max()
    assert np.abs(plain - logits[1]).max() > 1e-3 * np.abs(plain).max()  # the factors do change the result


@pytest.mark.parametrize(("change", "message"), [
    (lambda k, t: (k | {"llama.expert_count": (gguf.GGUFValueType.UINT32, 8)}, t),
     "key 'llama.expert_count' is 8: mixture-of-experts models are not supported"),
    (lambda k, t: (k | {"llama.rope.scaling.type": (gguf.GGUFValueType.STRING, "linear")}, t),
     "key 'llama.rope.scaling.type' is 'linear': this RoPE scaling is not supported"),
    (lambda k, t: (k, t | {"blk.0.attn_q.bias": np.zeros(Q_DIM, np.float32)}),
     "tensor 'blk.0.attn_q.bias': biases are not supported"),
    (lambda k, t: (k, without(t, "blk.1.ffn_gate.weight")), "tensor 'blk.1.ffn_gate.weight' is missing"),
    (lambda k, t: (k, t | {"blk.0.attn_k.weight": np.zeros((Q_DIM, N_EMBD), np.float32)}),
     f"tensor 'blk.0.attn_k.weight' has shape [{N_EMBD}, {Q_DIM}], expected [{N_EMBD}, {KV_DIM}]"),
    (lambda k, t: (k | {"llama.attention.key_length": (gguf.GGUFValueType.UINT32, 32)}, t),
     "key 'llama.attention.key_length' is 32"),
])
def test_llama_files_pyphi_cannot_run(tmp_path, change, message):
    k, t = change(keys("llama"), llama_tensors(phi3_tensors()))
    expect_error(write_gguf(tmp_path / "f.gguf", k, t, arch="llama"), message)

