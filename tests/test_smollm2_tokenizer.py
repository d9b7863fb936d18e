"""pyphi's tokenizer against llama.cpp's on the real SmolLM2-135M-Instruct GGUF (marker `peer`).

The reference is llama-cpp-python 0.3.36 loading the same file with vocab_only=True:
`tokenize(text, add_bos=False, special=...)` for ids, `llama_vocab_is_eog` for the stop set.
SmolLM2's vocabulary is GPT-2-style BPE (tokenizer.ggml.pre "smollm": digits split one by one,
then GPT-2's regex) whose merge priorities come from its 48,900 merges, not from its ids; 21 byte
values (0x04, 0x06, 0xC0, 0xF5.., ...) have no token at all. Corpus: tests/text_corpus.py (over
1 MB, offline, seeded) plus ChatML text and the bytes without a token.

The other merge-ranked pre-tokenizers pyphi knows are checked on the same vocabulary: a copy of
the file's metadata (no tensors) with only tokenizer.ggml.pre changed, so llama.cpp applies its
own regexes for that name to the same merges.
"""

from __future__ import annotations

import gguf
import pytest
import text_corpus

from pyphi.pretokenizers import PRE_TOKENIZERS, ranks_from_merges
from pyphi.tokenizer import Tokenizer

pytestmark = pytest.mark.peer

# Text the corpus does not hold: SmolLM2's own control tokens, bytes it has no token for, digit
# and whitespace runs in every arrangement the digit split touches.
EXTRA = [
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    " <|im_end|>  <repo_name>x<file_sep>\n\n<|endoftext|><jupyter_code>print(1)<empty_output>",
    "a\x04b\x06c \x13\x14\x16\x1d chr \U00050000 \U00090000 x",
    "123 4567  89\u0663\u0664 x1y2 3.14e-10 \u00bd\u2155  \t7\n\n8 \u3000 9",
    "It's 'S 'll 'LL don't I'M we've\u2019s",
]


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def corpus():
    docs = text_corpus.corpus()
    assert sum(len(d.encode("utf-8")) for d in docs) >= 1 << 20
    return docs + EXTRA


def _peer_vocab(llama_cpp, path):
    return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _mismatches(tok, peer, docs, special):
    """(documents whose ids differ, tokens compared)."""
    bad, n_tokens = [], 0
    for doc in docs:
        theirs = peer.tokenize(doc.encode("utf-8"), add_bos=False, special=special)
        n_tokens += len(theirs)
        if tok.encode(doc, special=special) != theirs:
            bad.append(doc[:60])
    return bad, n_tokens


@pytest.mark.parametrize("special", [False, True])
def test_ids_equal_llama_cpp(smollm2_gguf, llama_cpp, corpus, special):
    tok = Tokenizer.from_path(smollm2_gguf)
    bad, n_tokens = _mismatches(tok, _peer_vocab(llama_cpp, smollm2_gguf), corpus, special)
    n_bytes = sum(len(d.encode("utf-8")) for d in corpus)
    print(f"special={special}: {len(corpus)} documents, {n_bytes} bytes, {n_tokens} tokens, {len(bad)} differ")
    assert not bad


def test_stop_ids_equal_llama_cpp_end_of_generation(smollm2_gguf, llama_cpp):
    """llama.cpp's EOG set: eos <|im_end|> (2), <|endoftext|> (0), and <reponame> (4), which it
    takes for the FIM repo token."""
    tok = Tokenizer.from_path(smollm2_gguf)
    peer = _peer_vocab(llama_cpp, smollm2_gguf)
    vocab = llama_cpp.llama_model_get_vocab(peer._model.model)
    eog = {i for i in range(tok.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert tok.stop_ids == eog == {0, 2, 4}
    assert (tok.bos_id, tok.eos_id) == (1, 2)


def _vocab_copy(src, dst, pre: str):
    """src's metadata (no tensors) with tokenizer.ggml.pre = pre."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else field.contents()
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, gguf.GGUFValueType.ARRAY, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, field.types[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


MERGE_RANKED = sorted(name for name, p in PRE_TOKENIZERS.items() if p.ranks is ranks_from_merges)


@pytest.mark.parametrize("pre", MERGE_RANKED)
def test_every_merge_ranked_pre_tokenizer_equals_llama_cpp(smollm2_gguf, llama_cpp, corpus, tmp_path, pre):
    path = _vocab_copy(smollm2_gguf, tmp_path / f"{pre}.gguf", pre)
    tok = Tokenizer.from_path(path)
    docs = corpus[::3] + EXTRA  # a third of the corpus (every script and case is spread over it)
    bad, n_tokens = _mismatches(tok, _peer_vocab(llama_cpp, path), docs, special=False)
    print(f"{pre}: {len(docs)} documents, {n_tokens} tokens, {len(bad)} differ")
    assert not bad
