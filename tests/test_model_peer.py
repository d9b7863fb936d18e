"""pyphi.model against llama.cpp (llama-cpp-python 0.3.36) on the same GGUF files (marker `peer`).

Contexts stay <= 4096 tokens, where both engines use the short LongRoPE factors (llama.cpp picks
the set from the allocated context size, not the sequence length: SPEC §5.3). Both keep an f16
KV cache. llama.cpp also rounds activations to f16 before F16 matmuls and attention (ggml's
vec_dot_type of F16 is F16) where pyphi keeps float32, so the two differ by more than pyphi and
transformers do. Measured on a 64-token prompt, max |diff| / max |logit|: tiny F16 2.3e-4,
Q8_0 6.1e-3; head128 F16 4.7e-4, Q8_0 9.8e-3; argmax identical at every position.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_model import prompt, ratio

from pyphi.model import Model

pytestmark = pytest.mark.peer

BOUNDS = {"f16": 1e-3, "q8_0": 2e-2}


@pytest.mark.parametrize("size", ["tiny", "head128"])
@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_logits_match_llama_cpp(model_zoo, size, out_type):
    llama_cpp = pytest.importorskip("llama_cpp")
    path = model_zoo.gguf(size, out_type)
    tokens = prompt(64, seed=3)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
    try:
        llm.eval([int(t) for t in tokens])
        peer = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
    with Model(path, n_ctx=256) as model:
        ours = model.eval(tokens, logits="all")
    r = ratio(ours, peer)
    print(f"{size} {out_type} vs llama.cpp: max|diff|/max|logit| = {r:.3g}")
    np.testing.assert_array_equal(ours.argmax(-1), peer.argmax(-1))
    assert r <= BOUNDS[out_type]
