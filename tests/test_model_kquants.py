"""pyphi.model on GGUFs whose matrices are K-quants (Q4_K, Q5_K, Q6_K), against transformers.

The "head128" random checkpoint (hidden 256, FFN 512, head_dim 128: every row length a multiple
of 256, as the K-quants need) is converted to F32 by pyphi-convert, then its 2-D weights are
requantized here (pyphi's quantizer, which tests/test_quants_k.py holds bit-identical to
ggml's): every matrix in one K-quant, or a Q4_K_M-like mix (Q4_K, with Q6_K for ffn_down and the
tied embedding/head, which llama-quantize gives more bits). Each matrix is then computed in its
own type by the K-quant kernels. Measures, as test_model.py: top-1 agreement with transformers'
float32 logits and mean KL(transformers || pyphi) per token, with bounds set from what was
measured (below); more bits must do better. Every ISA agrees with the scalar forward (bounds
below ISA_MAX_KL).
"""

from __future__ import annotations

import numpy as np
import pytest

from pyphi.convert.gguf_writer import GGUFWriter
from pyphi import cpu, quants
from pyphi._native import lib
from pyphi.gguf_format import ValueType
from pyphi.gguf_reader import GGUFFile
from pyphi.model import Model

from test_model import hf_logits, mean_kl, prompt, ratio

Q4_K, Q5_K, Q6_K = lib.PYPHI_TYPE_Q4_K, lib.PYPHI_TYPE_Q5_K, lib.PYPHI_TYPE_Q6_K
MIXES = {
    "q4_k": lambda name: Q4_K,
    "q5_k": lambda name: Q5_K,
    "q6_k": lambda name: Q6_K,
    "q4_k_m_like": lambda name: Q6_K if ("ffn_down" in name or name == "token_embd.weight") else Q4_K,
}
# mix -> (minimum top-1 agreement, maximum mean KL in nats), f32 KV cache; measured (80-token
# prompt, seed 1), the same on every ISA: q4_k 0.688 / 1.8e-3, q5_k 0.775 / 5.9e-4, q6_k 0.912 /
# 1.0e-4, q4_k_m_like 0.750 / 1.2e-3 (test_model.py's head128 q4_0: 0.725 / 1.6e-3, q8_0: 0.963 /
# 1.7e-5). Random weights give near-flat distributions, so these only rank the formats.
BOUNDS = {
    "q4_k": (0.6, 3e-3),
    "q5_k": (0.7, 1e-3),
    "q6_k": (0.85, 2e-4),
    "q4_k_m_like": (0.65, 2e-3),
}
# Each SIMD ISA against the scalar forward. The K-quant dots agree across ISAs only within the
# float bound (kernels_scalar.c), and the next layer requantizes its input to Q8_K, where a last-bit
# difference can move a code by one step: measured max |diff| / max |logit| up to 1.1e-2 (a few
# positions), but KL(scalar || ISA) at most 4.6e-6 and top-1 agreement 1.000 on every mix.
ISA_MIN_TOP1, ISA_MAX_KL = 0.97, 3e-5


def requantize(src, dst, choose) -> dict[str, int]:
    """Copy the GGUF `src` to `dst` with each 2-D F32 tensor quantized to choose(name).
    Returns {tensor name: type written}."""
    types = {}
    with GGUFFile(src) as f, open(dst, "wb") as out:
        w = GGUFWriter(f.alignment)
        for key, value in f.metadata.items():
            vt = f.value_type(key)
            if vt == ValueType.ARRAY:
                w.add_array(key, f.element_type(key), value)
            elif vt == ValueType.STRING:
                w.add_string(key, value)
            else:
                w.add_scalar(key, vt, value)
        for name, info in f.tensors.items():
            t = choose(name) if info.type == lib.PYPHI_TYPE_F32 and len(info.shape) == 2 else info.type
            types[name] = t
            w.add_tensor(name, info.shape, t)
        w.write_header(out)
        for name, info in f.tensors.items():
            data = f.tensor_data(name)
            w.write_data(quants.quantize(types[name], data) if types[name] != info.type else data)
            w.end_tensor()
        w.finish()
    return types


@pytest.fixture(scope="module")
def kquant_files(model_zoo, tmp_path_factory):
    src = model_zoo.gguf("head128", "f32")
    out = tmp_path_factory.mktemp("kquants")
    files = {}
    for mix, choose in MIXES.items():
        path = out / f"head128-{mix}.gguf"
        types = requantize(src, path, choose)
        files[mix] = (path, types)
    return files


@pytest.fixture(scope="module")
def hf_reference(model_zoo):
    return hf_logits(model_zoo.hf_model("head128"), prompt())


def test_matrices_are_stored_in_the_requested_types(kquant_files):
    _, types = kquant_files["q4_k_m_like"]
    assert types["token_embd.weight"] == Q6_K and types["blk.0.ffn_down.weight"] == Q6_K
    assert types["blk.1.attn_qkv.weight"] == Q4_K and types["blk.0.ffn_up.weight"] == Q4_K
    assert types["output_norm.weight"] == lib.PYPHI_TYPE_F32


def test_k_quant_models_top1_and_kl(kquant_files, hf_reference):
    kls = {}
    for mix, (path, _) in kquant_files.items():
        with Model(path, n_ctx=256, kv_type="f32") as model:
            ours = model.eval(prompt(), logits="all")
        top1 = float((ours.argmax(-1) == hf_reference.argmax(-1)).mean())
        kls[mix] = mean_kl(hf_reference, ours)
        print(f"head128 {mix}: top-1 agreement {top1:.3f}, mean KL {kls[mix]:.3g}")
        min_top1, max_kl = BOUNDS[mix]
        assert top1 >= min_top1, mix
        assert kls[mix] <= max_kl, mix
    assert kls["q6_k"] < kls["q5_k"] < kls["q4_k"]
    assert kls["q4_k_m_like"] < kls["q4_k"]


def test_every_isa_agrees_with_the_scalar_forward_packed_or_not(kquant_files):
    """Each ISA, with ggml's layout and with the packed one, against the scalar forward. On the
    scalar ISA packing changes no bit (packed Q4_K is the scalar dot on every ISA; packed Q6_K the
    ISA's own dot)."""
    path, _ = kquant_files["q4_k_m_like"]
    results = {}
    for isa in cpu.supported_isas():
        for pack in (False, True):
            with cpu.forced_isa(isa), Model(path, n_ctx=128, kv_type="f32", pack_weights=pack) as model:
                assert (model.sizes.packed_bytes > 0) == pack
                results[isa, pack] = model.eval(prompt(), logits="all")
    ref = results["scalar", False]
    np.testing.assert_array_equal(results["scalar", True], ref)
    for (isa, pack), logits in results.items():
        top1 = float((logits.argmax(-1) == ref.argmax(-1)).mean())
        kl = mean_kl(ref, logits)
        print(f"q4_k_m_like {isa} packed={pack} vs scalar: top-1 {top1:.3f}, KL {kl:.3g}, ratio {ratio(logits, ref):.3g}")
        assert top1 >= ISA_MIN_TOP1 and kl <= ISA_MAX_KL, (isa, pack)


def test_ggml_numerics_k_quants_same_bits_on_any_thread_count(kquant_files):
    """numerics="ggml" on K-quant matrices (test_llama_quantized_files holds it to llama.cpp's bits):
    one and two threads give the same logits, for prefills of 7 tokens (every token through
    ggml's vec_dot and gemv orders) and 9 (the tiled order, and repacked Q4_K's groups of 4 plus
    one), then a decode step."""
    for mix in ("q4_k_m_like", "q5_k"):
        path, _ = kquant_files[mix]
        results = []
        for threads in (1, 2):
            with Model(path, n_ctx=64, n_threads=threads, numerics="ggml") as model:
                short = model.eval(prompt(7), logits="all")
                model.reset()
                long = model.eval(prompt(9), logits="all")
                step = model.eval(prompt(1, seed=2), logits="all")
            results.append((short, long, step))
        for one, two in zip(*results):
            np.testing.assert_array_equal(one, two, err_msg=mix)
        assert np.isfinite(results[0][1]).all()


# llama.cpp's quantizer mixes on the head128 checkpoint: the K-quant types each file holds.
LLAMA_MIXES = {"Q4_K_M": {Q4_K, Q6_K}, "Q5_K_M": {Q5_K, Q6_K}, "Q6_K": {Q6_K}}


def _llama_logits(llama_cpp, path, tokens, **kwargs) -> np.ndarray:
    llm = llama_cpp.Llama(str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1, **kwargs)
    llm.eval(tokens.tolist())
    logits = np.array(llm.scores[: len(tokens)])
    llm.close()
    return logits


@pytest.mark.peer
@pytest.mark.parametrize("ftype", list(LLAMA_MIXES))
def test_llama_quantized_files(model_zoo, tmp_path, ftype):
    """llama.cpp's own Q4_K_M, Q5_K_M and Q6_K of the head128 F32 GGUF (llama_model_quantize, no
    imatrix). Each K-quant tensor equals pyphi's quantizer on the same F32 rows byte for byte.

    numerics="ggml" (csrc/ggml_numerics.c: Q8_K activations, ggml's Q5_K/Q6_K dots, its repacked
    Q4_K matmul, the phi3 graph's query scaling and LongRoPE factors) gives llama.cpp's logits bit
    for bit at every position, so the same argmax everywhere.

    pyphi's own numerics, against llama.cpp's (default path) at every position: the two
    engines round differently (summation order; llama.cpp's f16 queries and attention weights), and
    every matmul requantizes its input, so a last-bit difference can move a Q8_K code: their logits
    differ by about 0.02 (max |logit| 2.4), and random weights give near-flat distributions (median
    top-2 margin 0.06-0.09). The yardstick is llama.cpp against itself with flash attention, which
    rounds differently in the same way. Measured (80 positions): pyphi agrees at 0.963 / 0.988 /
    0.988 of them, llama.cpp's flash path at 0.950 / 0.988 / 0.988; every position where pyphi
    differs is a tie at that precision (llama.cpp's margin 0.0002-0.015, below the logit difference
    there)."""
    import ctypes

    llama_cpp = pytest.importorskip("llama_cpp")
    src = model_zoo.gguf("head128", "f32")
    dst = tmp_path / f"head128-{ftype}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 1
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) == 0
    seen = set()
    with GGUFFile(src) as f, GGUFFile(dst) as g:
        for name, info in g.tensors.items():
            if info.type in (Q4_K, Q5_K, Q6_K):
                seen.add(info.type)
                assert np.array_equal(quants.quantize(info.type, f.tensor_data(name)), g.tensor_data(name)), name
    assert seen == LLAMA_MIXES[ftype]
    tokens = prompt()
    with Model(dst, n_ctx=128) as model:
        ours = model.eval(tokens, logits="all")
    with Model(dst, n_ctx=128, numerics="ggml") as model:
        exact = model.eval(tokens, logits="all")
    theirs = _llama_logits(llama_cpp, dst, tokens)
    np.testing.assert_array_equal(exact, theirs)  # so the same argmax at every position
    flash = _llama_logits(llama_cpp, dst, tokens, flash_attn=True)
    agree = ours.argmax(-1) == theirs.argmax(-1)
    agree_flash = float((flash.argmax(-1) == theirs.argmax(-1)).mean())
    top2 = np.sort(theirs, -1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]  # (positions,): llama.cpp's top-1 over its runner-up
    diff = np.abs(ours - theirs).max(-1)  # (positions,)
    print(f"{ftype}: argmax agreement {agree.mean():.3f} (llama.cpp flash vs default {agree_flash:.3f}); "
          f"max |diff| {diff.max():.4f}; where they differ, margin {margin[~agree]} vs |diff| {diff[~agree]}")
    assert diff.max() <= 0.05 * np.abs(theirs).max()
    assert np.all(margin[~agree] < diff[~agree]), "pyphi's argmax differs where llama.cpp's is no tie"
    assert agree.mean() >= agree_flash - 2 / len(tokens)
