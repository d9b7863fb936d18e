"""Tokenizer metadata a crafted GGUF may carry that must be refused with a one-line
TokenizerError naming the file and the key, never hang or crash (found by the gguf fuzz harness's
kind of input: an added token whose text is empty matched at every position, and encoding never
advanced)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyphi.convert.gguf_writer import GGUFWriter
from pyphi.gguf_format import ValueType
from pyphi.gguf_reader import GGUFFile
from pyphi.tokenizer import Tokenizer, TokenizerError

sys.path.insert(0, str(Path(__file__).parent / "fuzz"))
from seeds import SEED_VOCAB, small_gguf  # noqa: E402  (the converter's writer, vocabulary cut)


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    """src with the metadata keys in `changes` replaced (value, type, element type)."""
    with GGUFFile(src) as f:
        writer = GGUFWriter(f.alignment)
        for key, value in f.metadata.items():
            if key == "general.alignment":
                continue
            vtype = f.value_type(key)
            if key in changes:
                value, vtype, etype = changes[key]
            if vtype is ValueType.ARRAY:
                etype = changes[key][2] if key in changes else f.element_type(key)
                writer.add_array(key, etype, value.tolist() if hasattr(value, "tolist") else value)
            elif vtype is ValueType.STRING:
                writer.add_string(key, value)
            else:
                writer.add_scalar(key, vtype, value)
        with open(dst, "wb") as out:
            writer.write_header(out)
            writer.finish()
    return dst


@pytest.fixture(scope="module")
def small(model_zoo, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "small.gguf"
    small_gguf(model_zoo.gguf("tiny", "q8_0"), path)
    return path


def _tokens_and_types(path):
    with GGUFFile(path) as f:
        return list(f.metadata["tokenizer.ggml.tokens"]), [int(t) for t in f.metadata["tokenizer.ggml.token_type"]]


def test_the_small_vocabulary_builds(small):
    assert Tokenizer.from_path(small).n_vocab == SEED_VOCAB


def test_an_empty_added_token_is_refused(small, tmp_path):
    tokens, types = _tokens_and_types(small)
    tokens[-1], types[-1] = "", 3  # CONTROL
    bad = _rewrite(small, tmp_path / "bad.gguf",
                   **{"tokenizer.ggml.tokens": (tokens, ValueType.ARRAY, ValueType.STRING),
                      "tokenizer.ggml.token_type": (types, ValueType.ARRAY, ValueType.INT32)})
    with pytest.raises(TokenizerError, match=rf"{bad}: tokenizer.ggml.tokens\[{SEED_VOCAB - 1}\] is an empty added token"):
        Tokenizer.from_path(bad)


@pytest.mark.parametrize("key, value, needle", [
    ("tokenizer.ggml.model", "llama", "only 'gpt2'"),
    ("tokenizer.ggml.pre", "nope", "unknown pre-tokenizer"),
    ("tokenizer.ggml.eos_token_id", 10**6, "not a token id below"),
])
def test_bad_tokenizer_keys_are_refused(small, tmp_path, key, value, needle):
    vtype = ValueType.STRING if isinstance(value, str) else ValueType.UINT32
    bad = _rewrite(small, tmp_path / "bad.gguf", **{key: (value, vtype, None)})
    with pytest.raises(TokenizerError, match=needle) as caught:
        Tokenizer.from_path(bad)
    assert str(caught.value).startswith(f"{bad}: ") and "\n" not in str(caught.value)


def test_token_types_of_the_wrong_length_are_refused(small, tmp_path):
    _, types = _tokens_and_types(small)
    bad = _rewrite(small, tmp_path / "bad.gguf",
                   **{"tokenizer.ggml.token_type": (types[:-5], ValueType.ARRAY, ValueType.INT32)})
    with pytest.raises(TokenizerError, match=f"token_type has {SEED_VOCAB - 5} entries"):
        Tokenizer.from_path(bad)
