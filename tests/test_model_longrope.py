"""LongRoPE across original_context_length (4096) against transformers, on the tiny model.

transformers picks the factor set of a forward call from max(position) + 1: short factors while
the sequence has at most 4096 tokens, long factors for the whole sequence beyond (SPEC §4.6). So
the reference logits at position p are those of a full forward of tokens[:p + 1]: short for
p <= 4095, long for p >= 4096. A causal model with one factor set gives the logits of every
shorter prefix inside one forward, so two reference forwards cover a whole decode: tokens[:4096]
(short) and tokens[:4110] (long, positions 4096..4109). transformers' own generate gets the same
numbers by dropping its cache at 4097 tokens (Phi3ForCausalLM.prepare_inputs_for_generation);
test_reference_is_what_generate_computes replays that loop and checks it (2.6e-7).

Both of pyphi's ways of handling the switch are checked:
- "reprefill" recomputes the cache with the new factors: exact (bound 1e-5 of max |logit|,
  measured 2e-7 .. 4e-7).
- "rerotate" re-rotates the cached keys: exact for layer 0 only, since the keys and values of
  the layers above were computed from hidden states shaped by the old factors. Measured 5e-5 ..
  1e-4 of max |logit| at positions >= 4096 on tiny (same argmax); bound 3e-4. With a single layer
  it is exact (test_rerotation_is_exact_with_one_layer), which shows where the gap comes from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model import hf_logits, ratio

from pyphi.model import Model

ORIG = 4096
PREFILL = 4090
DECODE = 20  # positions 4090 .. 4109
LONG_PREFILL = 4200
EXACT = 1e-5
REROTATE = 3e-4
FIRST_REF = 4080  # reference logits start at this position


def tokens() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 200_000, LONG_PREFILL).astype(np.int32)


class Reference:
    """transformers' logits for positions FIRST_REF .. 4109 (index p - FIRST_REF) and of the
    4200-token prefill's positions 4090 .. 4199."""

    def __init__(self, hf_model):
        t = tokens()
        end = PREFILL + DECODE
        short = hf_logits(hf_model, t[:ORIG], keep=ORIG - FIRST_REF)
        long_ = hf_logits(hf_model, t[:end], keep=end - ORIG)
        self.steps = np.concatenate([short, long_])
        self.prefill = hf_logits(hf_model, t, keep=LONG_PREFILL - PREFILL)

    def at(self, pos: int) -> np.ndarray:
        return self.steps[pos - FIRST_REF]


@pytest.fixture(scope="module")
def reference(model_zoo):
    return Reference(model_zoo.hf_model("tiny"))


def hf_generate_steps(hf_model) -> dict[int, np.ndarray]:
    """What transformers' generate computes at each step of the same decode: a cached forward
    per token, except that at 4097 tokens (cache of <= 4096) the cache is dropped and the whole
    sequence re-run, as Phi3ForCausalLM.prepare_inputs_for_generation does. position -> logits."""
    t = torch.tensor(tokens()[None].astype(np.int64))
    out = {}
    with torch.no_grad():
        cache = hf_model(t[:, :PREFILL], use_cache=True, logits_to_keep=1).cache
        for pos in range(PREFILL, PREFILL + DECODE):
            if pos + 1 >= ORIG + 1 and cache.get_seq_length() <= ORIG:
                step = hf_model(t[:, : pos + 1], use_cache=True, logits_to_keep=1)
            else:
                step = hf_model(t[:, pos : pos + 1], cache=cache, use_cache=True,
                                position_ids=torch.tensor([[pos]]))
            cache = step.cache
            out[pos] = step.logits[0, -1].numpy()
    return out


def test_reference_is_what_generate_computes(model_zoo, reference):
    """The full-forward references equal transformers' own cached decode (with its cache drop
    at 4097 tokens), so comparing against them is comparing against generate."""
    steps = hf_generate_steps(model_zoo.hf_model("tiny"))
    worst = max(ratio(logits, reference.at(pos)) for pos, logits in steps.items())
    print(f"transformers cached decode vs full forwards: {worst:.2g}")
    assert worst <= EXACT


def decode_across(model: Model) -> dict[int, np.ndarray]:
    """Prefill 4090 tokens, then decode 20 one at a time: position -> logits."""
    t = tokens()
    out = dict(zip(range(FIRST_REF, PREFILL), model.eval(t[:PREFILL], logits=PREFILL - FIRST_REF)))
    for pos in range(PREFILL, PREFILL + DECODE):
        out[pos] = model.eval(t[pos : pos + 1])
        assert model.rope_long == (pos + 1 > ORIG)
    return out


@pytest.mark.parametrize("mode, bound", [("reprefill", EXACT), ("rerotate", REROTATE)])
def test_decode_across_4096(model_zoo, reference, mode, bound):
    with Model(model_zoo.gguf("tiny", "f32"), n_ctx=4400, kv_type="f32", longrope_switch=mode) as model:
        logits = decode_across(model)
        assert model.rope_switches == 1
        t = tokens()
        # back below 4097 tokens: the next call runs with short factors again; the prefix the
        # cache keeps was computed with short factors, so both modes are exact here
        model.truncate(4000)
        back = model.eval(t[4000:ORIG], logits=ORIG - FIRST_REF)
        assert not model.rope_long and model.rope_switches == 2
    ratios = {pos: ratio(logits[pos], reference.at(pos)) for pos in logits}
    print(f"{mode}: " + ", ".join(f"{p}: {ratios[p]:.2g}" for p in (4089, 4095, 4096, 4097, 4109)))
    for pos in (4095, 4096, 4097):
        assert ratios[pos] <= bound, pos
    for pos, r in ratios.items():
        assert r <= (EXACT if pos < ORIG else bound), pos
        assert logits[pos].argmax() == reference.at(pos).argmax(), pos
    back_ratio = ratio(back, reference.steps[: ORIG - FIRST_REF])
    print(f"{mode}: truncated to 4000 and back to 4096 tokens: {back_ratio:.2g}")
    assert back_ratio <= EXACT


@pytest.mark.parametrize("mode, bound", [("reprefill", EXACT), ("rerotate", REROTATE)])
def test_prefill_4200_then_back_below_4097(model_zoo, reference, mode, bound):
    t = tokens()
    with Model(model_zoo.gguf("tiny", "f32"), n_ctx=4400, kv_type="f32", longrope_switch=mode) as model:
        prefill = model.eval(t, logits=LONG_PREFILL - PREFILL)
        assert model.rope_long and model.rope_switches == 0
        # this time the kept prefix was computed with long factors: reprefill recomputes it,
        # rerotate turns its keys back to the short rotation
        model.truncate(4000)
        back = model.eval(t[4000:ORIG], logits=ORIG - FIRST_REF)
        assert not model.rope_long and model.rope_switches == 1
    prefill_ratio = ratio(prefill, reference.prefill)
    back_ratio = ratio(back, reference.steps[: ORIG - FIRST_REF])
    print(f"{mode}: prefill of 4200 {prefill_ratio:.2g}, back to 4096 tokens {back_ratio:.2g}")
    assert prefill_ratio <= EXACT
    np.testing.assert_array_equal(prefill.argmax(-1), reference.prefill.argmax(-1))
    assert back_ratio <= bound


def test_rerotation_is_exact_with_one_layer(model_zoo):
    """With one layer the cached keys come straight from the embeddings, so undoing the short
    rotation and applying the long one leaves exactly what a long-factor forward caches."""
    hf_model = model_zoo.hf_model("one_layer")
    t = tokens()
    end = PREFILL + DECODE
    ref = hf_logits(hf_model, t[:end], keep=end - ORIG)
    with Model(model_zoo.gguf("one_layer", "f32"), n_ctx=4400, kv_type="f32", longrope_switch="rerotate") as model:
        model.eval(t[:PREFILL], logits=None)
        steps = [model.eval(t[pos : pos + 1]) for pos in range(PREFILL, end)]
    r = ratio(np.stack(steps[ORIG - PREFILL :]), ref)
    print(f"one layer, rerotate: {r:.2g}")
    assert r <= EXACT
