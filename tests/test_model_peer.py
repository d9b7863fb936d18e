"""pyphi.model against llama.cpp (llama-cpp-python 0.3.36) on the same GGUF files (marker `peer`).

Contexts stay <= 4096 tokens, where both engines use the short LongRoPE factors (llama.cpp picks
the set from the allocated context size, not the sequence length: SPEC §5.3). Both keep an f16
KV cache. llama.cpp also rounds activations to f16 before F16 matmuls and attention (ggml's
vec_dot_type of F16 is F16) where pyphi keeps float32, so the two differ by more than pyphi and
transformers do. Measured on a 64-token prompt, max |diff| / max |logit|: tiny F16 2.3e-4,
Q8_0 6.1e-3; head128 F16 4.7e-4, Q8_0 9.8e-3; argmax identical at every position.
Also: GGUFs written by llama.cpp's own converter (and llama-quantize) load and compute exactly
as ours.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest
from test_convert_peer import llama_cpp_converter  # noqa: F401 (a fixture: the sdist's converter)
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


# ---- files written by llama.cpp's own converter and quantizer --------------------------------


@pytest.fixture(scope="module")
def llama_cpp_files(model_zoo, llama_cpp_converter, tmp_path_factory):
    """tiny converted by llama.cpp's convert_hf_to_gguf.py (f32, q8_0) and quantized from its f32
    file by llama-quantize (Q4_0): type -> path."""
    llama_cpp = pytest.importorskip("llama_cpp")
    out_dir = tmp_path_factory.mktemp("llama-cpp-files")
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_converter / "gguf-py"))
    files = {}
    for out_type in ("f32", "q8_0"):
        files[out_type] = out_dir / f"tiny-{out_type}.gguf"
        proc = subprocess.run(
            [sys.executable, str(llama_cpp_converter / "convert_hf_to_gguf.py"), str(model_zoo.hf_dir("tiny")),
             "--outfile", str(files[out_type]), "--outtype", out_type],
            capture_output=True, text=True, env=env, timeout=900, check=False, cwd=out_dir,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    files["q4_0"] = out_dir / "tiny-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert llama_cpp.llama_model_quantize(str(files["f32"]).encode(), str(files["q4_0"]).encode(),
                                          ctypes.byref(params)) == 0
    return files


@pytest.mark.parametrize("out_type", ["f32", "q8_0", "q4_0"])
def test_llama_cpp_files_load_and_compute_as_ours(model_zoo, llama_cpp_files, out_type):
    """llama.cpp's files hold the same tensors as ours (tests/test_convert_peer.py), so pyphi
    must load them and compute the same logits, bit for bit."""
    tokens = prompt(64, seed=3)
    with Model(llama_cpp_files[out_type], n_ctx=128) as model:
        theirs = model.eval(tokens, logits="all")
    with Model(model_zoo.gguf("tiny", out_type), n_ctx=128) as model:
        ours = model.eval(tokens, logits="all")
    np.testing.assert_array_equal(theirs, ours)
