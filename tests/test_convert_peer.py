"""pyphi-convert's files against llama.cpp itself (marker `peer`; slower).

1. llama.cpp (PyPI llama-cpp-python 0.3.36) loads every converted type, tokenizes SPEC §7's chat
   example to SPEC's ids, reports both stop tokens, and evaluates it to finite logits that agree
   across types (f16, bf16, q8_0, q4_0 vs f32) within what the weight types allow.
2. llama.cpp's own converter (`convert_hf_to_gguf.py` from the same sdist, llama.cpp 0c1e57098,
   run as a separate program) converts the same checkpoint; both files must agree key by key,
   in key order, tensor by tensor and byte by byte, except for the one key pyphi adds
   (`tokenizer.ggml.eot_token_id`).
3. q4_0, which llama.cpp's converter does not write, against llama-quantize (the installed
   llama.cpp's `llama_model_quantize`) of that converter's f32 file: the same, tensor by tensor
   (its tensor order differs). At this size llama-quantize's Q6_K for the tied token_embd does
   not fit 64-value rows and falls back to Q8_0, our choice; at full size it would be Q6_K.
The sdist comes from pip's download (and cache); without it, tests 2 and 3 are skipped.
"""

import ctypes
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from test_convert import open_gguf  # gguf-py's reader, sped up for 200k-entry vocabularies

from pyphi.testing import checkpoint as ckpt

pytestmark = pytest.mark.peer

OUT_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
LLAMA_CPP_TYPES = ["f32", "f16", "bf16", "q8_0"]  # what convert_hf_to_gguf.py --outtype offers of ours
SDIST = "llama_cpp_python-0.3.36.tar.gz"
SDIST_ROOT = "llama_cpp_python-0.3.36/vendor/llama.cpp/"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
OUR_EXTRA_KEYS = {"tokenizer.ggml.eot_token_id"}

# SPEC §7: the rendered [system, user, assistant, user] conversation and its token ids.
CHAT = (
    "<|system|>You are a helpful AI assistant.<|end|><|user|>Hi!<|end|><|assistant|>Hello.<|end|>"
    "<|user|>2x + 3 = 7?<|end|><|assistant|>"
)
CHAT_IDS = [200022, 3575, 553, 261, 10297, 20837, 29186, 13, 200020, 200021, 12194, 0, 200020, 200019,
            13225, 13, 200020, 200021, 17, 87, 659, 220, 18, 314, 220, 22, 30, 200020, 200019]  # fmt: skip
# Relative RMS difference of llama.cpp's logits from those of the f32 file: f16/bf16 round the
# activations too; the Q8_0/Q4_0 bounds are loose multiples of what Q8_0/Q4_0 weights give.
MAX_LOGIT_ERROR = {"f16": 0.01, "bf16": 0.01, "q8_0": 0.05, "q4_0": 0.3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return ckpt.write_size(tmp_path_factory.mktemp("phi4-tiny-peer"), "tiny", seed=4)


@pytest.fixture(scope="module")
def ours(tiny_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ours")
    exe = shutil.which("pyphi-convert")
    assert exe, "pyphi-convert is not on PATH: install the package"
    files = {}
    for out_type in OUT_TYPES:
        files[out_type] = out_dir / f"tiny-{out_type}.gguf"
        subprocess.run(
            [exe, str(tiny_dir), "-o", str(files[out_type]), "--type", out_type, "--no-progress"],
            check=True,
            timeout=600,
        )
    return files


# ---- llama.cpp loads and runs our files ------------------------------------------------------


@pytest.fixture(scope="module")
def llama_logits(ours):
    """out type -> llama.cpp's logits (n_tokens, 200064) for CHAT_IDS, with a few facts of the
    loaded vocabulary."""
    llama_cpp = pytest.importorskip("llama_cpp")
    results = {}
    for out_type, path in ours.items():
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False, logits_all=True)
        vocab = (llm.n_vocab(), llm.token_eos(), llm._model.token_eot())
        tokens = llm.tokenize(CHAT.encode(), add_bos=False, special=True)
        llm.eval(CHAT_IDS)
        results[out_type] = vocab, tokens, np.array(llm.scores[: llm.n_tokens])
        llm.close()
    return results


@pytest.mark.parametrize("out_type", OUT_TYPES)
def test_llama_cpp_loads_and_evaluates(llama_logits, out_type):
    vocab, tokens, logits = llama_logits[out_type]
    assert vocab == (200064, 199999, 200020)  # eot: our tokenizer.ggml.eot_token_id
    assert tokens == CHAT_IDS  # llama.cpp's gpt-4o pre-tokenizer on our vocabulary and merges
    assert logits.shape == (len(CHAT_IDS), 200064)
    assert np.isfinite(logits).all() and logits.std() > 0.05  # 0.02 * sqrt(64) = 0.16 expected


@pytest.mark.parametrize("out_type", list(MAX_LOGIT_ERROR))
def test_llama_cpp_logits_agree_across_types(llama_logits, out_type):
    reference = llama_logits["f32"][2]
    logits = llama_logits[out_type][2]
    error = np.sqrt(np.mean((logits - reference) ** 2) / np.mean(reference**2))
    assert error < MAX_LOGIT_ERROR[out_type]


# ---- llama.cpp's own converter on the same checkpoint -----------------------------------------


def _sdist(cache: Path) -> Path:
    path = cache / SDIST
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                "llama-cpp-python==0.3.36",
                "-d",
                str(cache),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if proc.returncode != 0 or not path.is_file():
            pytest.skip(f"cannot get {SDIST} (offline?): {proc.stderr.strip()[-200:]}")
    return path


@pytest.fixture(scope="module")
def llama_cpp_converter(tmp_path_factory):
    """convert_hf_to_gguf.py with its conversion/ package and gguf-py, extracted from the sdist."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyphi-tests"
    out = tmp_path_factory.mktemp("llama.cpp")
    with tarfile.open(_sdist(cache)) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(SDIST_ROOT) and m.name[len(SDIST_ROOT) :].startswith(CONVERTER_FILES)
        ]
        for m in members:
            m.name = m.name[len(SDIST_ROOT) :]
        tar.extractall(out, members=members, filter="data")
    return out


@pytest.fixture(scope="module")
def theirs(tiny_dir, llama_cpp_converter, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("theirs")
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_converter / "gguf-py"))
    files = {}
    for out_type in LLAMA_CPP_TYPES:
        files[out_type] = out_dir / f"tiny-{out_type}.gguf"
        proc = subprocess.run(
            [
                sys.executable,
                str(llama_cpp_converter / "convert_hf_to_gguf.py"),
                str(tiny_dir),
                "--outfile",
                str(files[out_type]),
                "--outtype",
                out_type,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    return files


@pytest.fixture(scope="module")
def their_q4_0(theirs, tmp_path_factory):
    llama_cpp = pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp("theirs-q4_0") / "tiny-q4_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_Q4_0)
    status = llama_cpp.llama_model_quantize(
        str(theirs["f32"]).encode(), str(out).encode(), ctypes.byref(params)
    )
    assert status == 0
    return out


def _key_values(path):
    reader = open_gguf(path)
    kv = {k: (tuple(f.types), f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, kv


@pytest.mark.parametrize("out_type", LLAMA_CPP_TYPES)
def test_same_file_as_llama_cpp_converter(ours, theirs, out_type):
    our_reader, our_kv = _key_values(ours[out_type])
    their_reader, their_kv = _key_values(theirs[out_type])
    assert set(our_kv) - set(their_kv) == OUR_EXTRA_KEYS
    assert [k for k in our_kv if k not in OUR_EXTRA_KEYS] == list(their_kv)  # same keys, same order
    for key, value in their_kv.items():
        assert our_kv[key] == value, key
    assert [t.name for t in our_reader.tensors] == [t.name for t in their_reader.tensors]
    for a, b in zip(our_reader.tensors, their_reader.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name


def test_q4_0_same_as_llama_quantize(ours, their_q4_0):
    our_reader, our_kv = _key_values(ours["q4_0"])
    their_reader, their_kv = _key_values(their_q4_0)
    assert set(our_kv) - set(their_kv) == OUR_EXTRA_KEYS
    for key, value in their_kv.items():
        assert our_kv[key] == value, key
    their_tensors = {t.name: t for t in their_reader.tensors}
    assert sorted(their_tensors) == sorted(t.name for t in our_reader.tensors)
    for a in our_reader.tensors:
        b = their_tensors[a.name]
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        assert np.asarray(a.data).tobytes() == np.asarray(b.data).tobytes(), a.name
