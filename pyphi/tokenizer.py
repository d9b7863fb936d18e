"""The tokenizer of a GGUF model: text <-> token ids, built from the file's `tokenizer.ggml.*` keys.

Ordinary text goes through a `tiktoken.Encoding` whose mergeable ranks are the byte strings of
the NORMAL tokens and whose split pattern is chosen by `tokenizer.ggml.pre`
(`pyphi.pretokenizers`); for vocabularies ranked by `tokenizer.ggml.merges` its values are
ranks, turned into ids here. Added tokens (CONTROL and USER_DEFINED, e.g. `<|user|>`) are matched
here, with Hugging Face's semantics for how the model was trained: literal matches, longest first,
and `rstrip` tokens swallow the whitespace after them (SPEC §6.1).

Trust: user text is never turned into added tokens. `encode(text)` is ordinary text only;
`encode(text, special=True)` parses added-token literals; `encode_segments` parses them only in
the segments the caller marks trusted (template text), so a user typing `<|end|><|system|>` gets
the ids of those characters, not the control tokens.

What this is not: a chat template or a sampler. A leaf module: it imports the GGUF reader,
`pyphi.pretokenizers`, tiktoken, numpy and the standard library.
"""

from __future__ import annotations

import codecs
import itertools
import os
import re
from typing import Iterable

import numpy as np
import tiktoken

from .gguf_format import ValueType
from .gguf_reader import GGUFFile
from .pretokenizers import PRE_TOKENIZERS, RankError

# llama.cpp llama_token_type (gguf-py constants.py TokenType).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
ADDED_TYPES = (CONTROL, USER_DEFINED)

# Ids of these keys are stop tokens (llama.cpp adds eos, eot, eom and the FIM pad, repo and
# file-separator tokens to its end-of-generation set).
STOP_ID_KEYS = tuple(f"tokenizer.ggml.{kind}_token_id" for kind in ("eos", "eot", "eom", "fim_pad", "fim_rep", "fim_sep"))
# Token texts llama.cpp treats as end of generation wherever they are in a vocabulary
# (llama-vocab.cpp at llama-cpp-python 0.3.36, the EOG loop of llama_vocab::impl::load), and the
# texts by which it finds FIM pad / repo / file-separator tokens, which are EOG too. Left out:
# "</s>", which llama.cpp adds for one model and removes again where it is a normal token.
STOP_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
        # FIM pad, repo, file separator
        "<|fim_pad|>",
        "<fim-pad>",
        "<fim_pad>",
        "<PAD>",
        "[PAD]",
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
        "<|file_sep|>",
    }
)

# The rstrip rule (the GGUF has no rstrip flag; SPEC §6.1): o200k_base's own specials end with
# `<|endofprompt|>`; every `<|...|>` CONTROL token after it was added for Phi-4-mini's chat
# format, and HF's tokenizer_config.json gives all of those (200019-200028) rstrip=true, while
# `<|endoftext|>` and `<|endofprompt|>` have none. A vocabulary without that marker gets no
# rstrip tokens unless the caller names them.
RSTRIP_AFTER = "<|endofprompt|>"

# What an rstrip token swallows: HF tokenizers strips with Rust's `char::is_whitespace`, the
# Unicode White_Space property (narrower than Python's str.isspace, which adds U+001C-U+001F).
WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)


class TokenizerError(ValueError):
    """The GGUF's tokenizer cannot be built; the one-line message names the file and the key."""


# ----------------------------------------------------------------------------------------------
# Token strings -> bytes


def _byte_alphabet() -> str:
    """GPT-2's byte-level alphabet, indexed by byte: bytes that are printable Latin-1 stand for
    themselves, the rest take U+0100, U+0101, ... in byte order (GPT-2 `bytes_to_unicode`)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    shifted = iter(range(0x100, 0x200))
    return "".join(chr(b) if b in printable else chr(next(shifted)) for b in range(256))


def _byte_of_code_point(alphabet: str) -> np.ndarray:
    """Lookup table code point -> byte (int16) for the alphabet's characters, -1 elsewhere."""
    table = np.full(max(map(ord, alphabet)) + 1, -1, dtype=np.int16)
    table[[ord(ch) for ch in alphabet]] = np.arange(256)
    return table


_ALPHABET = _byte_alphabet()
_BYTE_OF = _byte_of_code_point(_ALPHABET)


def _byte_level_bytes(path: str, texts: list[str], key: str = "tokenizer.ggml.tokens") -> list[bytes]:
    """Bytes of byte-level token strings ("Ġthe" -> b" the"), converted all at once: the
    concatenation's code points through a numpy lookup table, then one slice per token (one
    character is one byte). A per-token Python conversion of 200k tokens takes several times
    longer and dominated the build time."""
    code_points = np.frombuffer("".join(texts).encode("utf-32-le"), dtype="<u4")
    in_range = code_points < len(_BYTE_OF)
    values = _BYTE_OF[np.where(in_range, code_points, 0)]
    if not (in_range.all() and (values >= 0).all()):
        alphabet = set(_ALPHABET)
        token_id = next(i for i, text in enumerate(texts) if not alphabet.issuperset(text))
        what = "a NORMAL token" if key == "tokenizer.ggml.tokens" else "an entry"
        raise TokenizerError(
            f"{path}: {key}[{token_id}] {texts[token_id]!r} is {what} but not a byte-level string (GPT-2 alphabet)"
        )
    blob = values.astype(np.uint8).tobytes()
    ends = list(itertools.accumulate(map(len, texts)))
    return [blob[start:end] for start, end in zip([0, *ends], ends)]


def _token_bytes(path: str, tokens: list[str], types: np.ndarray) -> list[bytes]:
    """The bytes of every id. NORMAL tokens are byte-level strings; added tokens are plain UTF-8
    text; UNUSED ids (`[PAD200029]`...) have no text and decode to nothing, as in llama.cpp."""
    unsupported = sorted(set(np.unique(types).tolist()) - {NORMAL, CONTROL, USER_DEFINED, UNUSED})
    if unsupported:
        raise TokenizerError(
            f"{path}: tokenizer.ggml.token_type has type(s) {unsupported}, "
            "unsupported in a byte-level BPE vocabulary"
        )
    other_ids = np.flatnonzero(types != NORMAL).tolist()
    texts = list(tokens)
    for i in other_ids:
        texts[i] = ""
    by_id = _byte_level_bytes(path, texts)
    for i in other_ids:
        if types[i] in ADDED_TYPES:
            by_id[i] = tokens[i].encode("utf-8")
    return by_id


# ----------------------------------------------------------------------------------------------
# Reading the GGUF


def _string_key(gguf: GGUFFile, key: str) -> str:
    value = gguf.get(key)
    if not isinstance(value, str):
        raise TokenizerError(f"{gguf.path}: key {key!r} is missing or not a string")
    return value


def _id_key(gguf: GGUFFile, key: str, n_vocab: int) -> int | None:
    """An optional token id key; an id outside the vocabulary is an error."""
    value = gguf.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < n_vocab:
        raise TokenizerError(f"{gguf.path}: key {key!r} is {value!r}, not a token id below {n_vocab}")
    return value


def _pre_tokenizer_name(gguf: GGUFFile) -> str:
    """tokenizer.ggml.pre, checked to name a byte-level BPE pre-tokenizer we know."""
    model = _string_key(gguf, "tokenizer.ggml.model")
    if model != "gpt2":
        raise TokenizerError(
            f"{gguf.path}: tokenizer.ggml.model is {model!r}; only 'gpt2' (byte-level BPE) is supported"
        )
    pre = _string_key(gguf, "tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{gguf.path}: unknown pre-tokenizer tokenizer.ggml.pre = {pre!r} "
            f"(supported: {', '.join(map(repr, PRE_TOKENIZERS))})"
        )
    return pre


def _merge_bytes(path: str, merges: list[str]) -> list[bytes]:
    """The bytes each entry of tokenizer.ggml.merges ("Ġ t": two byte-level strings) makes."""
    joined = []
    for k, merge in enumerate(merges):
        left, space, right = merge.partition(" ")
        if not (space and left and right) or " " in right:
            raise TokenizerError(f"{path}: tokenizer.ggml.merges[{k}] {merge!r} is not two tokens separated by a space")
        joined.append(left + right)
    return _byte_level_bytes(path, joined, "tokenizer.ggml.merges")


def _encoding(gguf: GGUFFile, pre: str, token_bytes: list[bytes],
              normal_ids: list[int]) -> tuple[tiktoken.Encoding, np.ndarray | None]:
    """tiktoken's BPE over the NORMAL tokens, with the ranks and split pattern of `pre`, and the
    id of each rank (None: ranks are ids; -1: a byte without a token, dropped)."""
    pretokenizer = PRE_TOKENIZERS[pre]
    merges = gguf.get("tokenizer.ggml.merges") or []
    try:
        ranks, id_of_rank = pretokenizer.ranks(token_bytes, normal_ids, lambda: _merge_bytes(gguf.path, merges))
    except RankError as e:
        raise TokenizerError(f"{gguf.path}: {e}") from None
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        # tiktoken's BPE needs every single byte as a token, or it fails on some text (merge
        # ranks give every byte one, and drop those without a token).
        raise TokenizerError(
            f"{gguf.path}: the vocabulary has no token for byte(s) {missing[:8]}, "
            "so some text could not be encoded"
        )
    name = f"{os.path.basename(gguf.path)}:{pre}"
    encoding = tiktoken.Encoding(name, pat_str=pretokenizer.pattern, mergeable_ranks=ranks, special_tokens={})
    return encoding, None if id_of_rank is None else np.asarray(id_of_rank, dtype=np.int64)


def _stop_ids(gguf: GGUFFile, tokens: list[str]) -> set[int]:
    """eos/eot/eom ids and every token whose text llama.cpp takes for end of generation."""
    ids = {i for key in STOP_ID_KEYS if (i := _id_key(gguf, key, len(tokens))) is not None}
    return ids | {i for i, text in enumerate(tokens) if text in STOP_TEXTS}


def _default_rstrip_ids(added: dict[str, int], control_ids: set[int]) -> set[int]:
    """See RSTRIP_AFTER."""
    after = added.get(RSTRIP_AFTER)
    if after is None:
        return set()
    return {
        i
        for text, i in added.items()
        if i > after and i in control_ids and text.startswith("<|") and text.endswith("|>")
    }


# ----------------------------------------------------------------------------------------------
# The tokenizer


class Tokenizer:
    """Encode and decode with one model's vocabulary. Build it with `from_gguf` / `from_path`.

    Attributes: `encoding` (the tiktoken.Encoding of ordinary text; its values are ranks, which
    `id_of_rank` maps to ids unless it is None), `n_vocab`, `added_tokens`
    (text -> id of the CONTROL / USER_DEFINED tokens), `rstrip_ids`, `bos_id`, `eos_id`, `eot_id`
    (None when the file has no such key), `stop_ids` (every end-of-generation id) and
    `control_ids` (the CONTROL tokens, which decoding with special=False leaves out, as
    llama.cpp does; a GGUF marks every added `<|...|>` token CONTROL, `<|tool_call|>` included).
    """

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        token_bytes: list[bytes],
        added_tokens: dict[str, int],
        rstrip_ids: Iterable[int],
        special_ids: dict[str, int | None],
        stop_ids: Iterable[int],
        control_ids: Iterable[int] = (),
        id_of_rank: np.ndarray | None = None,
    ):
        self.encoding = encoding
        self.id_of_rank = id_of_rank
        self.n_vocab = len(token_bytes)
        self.added_tokens = dict(added_tokens)
        if "" in self.added_tokens:
            raise ValueError("an added token cannot be the empty string")
        self.rstrip_ids = frozenset(rstrip_ids)
        unknown = self.rstrip_ids - set(self.added_tokens.values())
        if unknown:
            raise ValueError(f"rstrip ids {sorted(unknown)} are not added tokens")
        self.bos_id = special_ids.get("bos")
        self.eos_id = special_ids.get("eos")
        self.eot_id = special_ids.get("eot")
        self.stop_ids = frozenset(stop_ids)
        self.control_ids = frozenset(control_ids)
        self._bytes = token_bytes
        # Longest literal first: among matches at one position the regex takes the first
        # alternative, which gives HF's leftmost-longest match.
        literals = sorted(self.added_tokens, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, literals))) if literals else None
        self._whitespace_re = re.compile(f"[{re.escape(WHITESPACE)}]*")

    @classmethod
    def from_gguf(cls, gguf: GGUFFile, rstrip_ids: Iterable[int] | None = None) -> Tokenizer:
        """The tokenizer of an open GGUF file. rstrip_ids overrides the rule of RSTRIP_AFTER."""
        pre = _pre_tokenizer_name(gguf)
        tokens = gguf.require("tokenizer.ggml.tokens", ValueType.ARRAY, ValueType.STRING)
        types = gguf.require("tokenizer.ggml.token_type", ValueType.ARRAY, ValueType.INT32)
        if len(types) != len(tokens):
            raise TokenizerError(
                f"{gguf.path}: tokenizer.ggml.token_type has {len(types)} entries, "
                f"tokenizer.ggml.tokens {len(tokens)}"
            )
        token_bytes = _token_bytes(gguf.path, tokens, types)
        encoding, id_of_rank = _encoding(gguf, pre, token_bytes, np.flatnonzero(types == NORMAL).tolist())
        added = {tokens[i]: i for i in np.flatnonzero(np.isin(types, ADDED_TYPES)).tolist()}
        if "" in added:  # it would match everywhere: encode_segments would never advance
            raise TokenizerError(f"{gguf.path}: tokenizer.ggml.tokens[{added['']}] is an empty added token")
        control_ids = set(np.flatnonzero(types == CONTROL).tolist())
        if rstrip_ids is None:
            rstrip_ids = _default_rstrip_ids(added, control_ids)
        special_ids = {
            kind: _id_key(gguf, f"tokenizer.ggml.{kind}_token_id", len(tokens))
            for kind in ("bos", "eos", "eot")
        }
        return cls(encoding, token_bytes, added, rstrip_ids, special_ids, _stop_ids(gguf, tokens), control_ids,
                   id_of_rank)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], rstrip_ids: Iterable[int] | None = None) -> Tokenizer:
        with GGUFFile(path) as gguf:
            return cls.from_gguf(gguf, rstrip_ids)

    # ---- encoding ----

    def encode(self, text: str, special: bool = False) -> list[int]:
        """Ids of text. special=False: ordinary text only (added-token literals are just their
        characters). special=True: added-token literals become their ids, with rstrip (HF)."""
        if not special:
            return self._encode_ordinary(text)
        return self.encode_segments([(text, True)])

    def _encode_ordinary(self, text: str) -> list[int]:
        ranks = self.encoding.encode_ordinary(text)
        if self.id_of_rank is None:
            return ranks
        ids = self.id_of_rank[ranks]
        return ids[ids >= 0].tolist()  # bytes without a token are dropped, as llama.cpp drops them

    def encode_segments(self, segments: Iterable[tuple[str, bool]]) -> list[int]:
        """Ids of the concatenated segments, parsing added tokens in trusted segments only.

        Equal to HF's encoding of the concatenated text whenever each added-token literal in it
        lies inside one trusted segment: ordinary text is split only at added tokens (so a text
        run that crosses a segment boundary is encoded as one), and an rstrip token swallows
        whitespace across boundaries, including the leading whitespace of an untrusted segment.
        """
        ids: list[int] = []
        pending: list[str] = []  # ordinary text since the last added token
        swallowing = False  # the last added token has rstrip and only whitespace followed so far
        for text, trusted in segments:
            pos = 0
            while True:
                if swallowing:
                    pos = self._whitespace_re.match(text, pos).end()
                    if pos == len(text):
                        break
                    swallowing = False
                found = self._added_re.search(text, pos) if trusted and self._added_re else None
                if found is None:
                    pending.append(text[pos:])
                    break
                pending.append(text[pos : found.start()])
                ids += self._encode_ordinary("".join(pending))
                pending = []
                token_id = self.added_tokens[found.group()]
                ids.append(token_id)
                pos = found.end()
                swallowing = token_id in self.rstrip_ids
        ids += self._encode_ordinary("".join(pending))
        return ids

    # ---- decoding ----

    def token_bytes(self, token_id: int, special: bool = True) -> bytes:
        """The bytes of one token (an added token's text; nothing for an UNUSED id, nor for a
        CONTROL token when special=False)."""
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{self.n_vocab - 1})")
        if not special and token_id in self.control_ids:
            return b""
        return self._bytes[token_id]

    def decode_bytes(self, ids: Iterable[int], special: bool = True) -> bytes:
        return b"".join(self.token_bytes(i, special) for i in ids)

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """Text of ids; bytes that are not valid UTF-8 become U+FFFD (as tiktoken and HF do).
        special=False leaves CONTROL tokens out (HF's skip_special_tokens, llama.cpp's default)."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def stream_decoder(self, hidden_ids: Iterable[int] = ()) -> StreamDecoder:
        return StreamDecoder(self, hidden_ids)


class StreamDecoder:
    """Incremental decoding for streamed generation: `push(id)` returns the text that id
    completes, holding back the bytes of a UTF-8 character split across tokens; `flush()` at
    the end returns what is left (an incomplete character as U+FFFD). The concatenated output
    equals `Tokenizer.decode` of all the ids."""

    def __init__(self, tokenizer: Tokenizer, hidden_ids: Iterable[int] = ()):
        self._tokenizer = tokenizer
        self._hidden = frozenset(hidden_ids)  # ids whose text is left out (e.g. role markers)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        data = b"" if token_id in self._hidden else self._tokenizer.token_bytes(token_id)
        return self._utf8.decode(data)

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)
