"""Hugging Face tokenizer files -> the `tokenizer.ggml.*` vocabulary of a byte-level BPE model.

Reads `tokenizer.json` when present (as transformers does), else `vocab.json` + `merges.txt`;
added tokens from `tokenizer_config.json` (`added_tokens_decoder`), `tokenizer.json` and
`added_tokens.json`; special tokens, add-BOS/EOS flags and the chat template from
`tokenizer_config.json` (falling back to config.json's `*_token_id`). The result is what
llama.cpp's converter writes for a `GPT2Tokenizer` model (conversion/base.py `_set_vocab_gpt2`,
gguf-py `SpecialVocab`; SPEC §5.1, §6.1):
- tokens are the byte-level strings of the vocabulary ("Ġthe"), added tokens as their text, and
  `[PAD{id}]` for the ids past the tokenizer up to the model's vocab_size;
- token types: NORMAL for vocabulary entries, CONTROL for added tokens that are special or look
  special (`<|...|>`), USER_DEFINED for other added tokens, UNUSED for the padding ids;
- merges as "left right" strings in rank order.

What this is not: a tokenizer. It never encodes text; the pre-tokenizer is recognized from the
vocabulary itself (see PRE_TOKENIZERS).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from pyphi.gguf_format import ValueType

from .checkpoint import read_json
from .errors import ConvertError

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
ADDED_TOKENS_FILE = "added_tokens.json"

# Byte-level BPE tokenizer classes (llama.cpp's Phi3 converter takes its `_set_vocab_gpt2` path
# for "GPT2Tokenizer", phi.py L45-52; the fast class reads the same files).
BPE_TOKENIZER_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")

# gguf-py constants.py TokenType (llama.cpp llama_token_type).
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# llama.cpp names a BPE pre-tokenizer by hashing the ids the HF tokenizer gives for a fixed text
# (convert_hf_to_gguf.py get_vocab_base_pre). Without running a tokenizer, we recognize the
# vocabulary instead: sha256 of its first n byte-level strings (ids 0..n-1) joined by "\n" ->
# llama.cpp's pre-tokenizer name. o200k_base: its 199,998 mergeable ranks (SPEC §6.1, computed
# from the authentic rank file of SPEC R5); llama.cpp maps it to "gpt-4o" (chkhsh ccc2ef01...).
PRE_TOKENIZERS = {
    (199998, "0fc8da96e9c1e979d83a0ad79129255c04f3d2806273de8cba33bbc584ed23fe"): "gpt-4o",
}

# The special tokens gguf-py's SpecialVocab looks up, in its order (vocab.py SpecialVocab).
SPECIAL_TOKEN_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# GGUF key of each special token id; "eot" is set by the architecture, not the tokenizer files.
SPECIAL_ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",  # sic: the key as gguf-py spells it
    "pad": "tokenizer.ggml.padding_token_id",
    "cls": "tokenizer.ggml.cls_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
}


@dataclasses.dataclass
class AddedToken:
    content: str
    special: bool


@dataclasses.dataclass
class Vocab:
    """The GGUF vocabulary: `tokens[i]` and `token_types[i]` for every id below vocab_size."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    special_ids: dict[str, int]  # "bos", "eos", ... -> id, in the order they are written
    add_special: dict[str, bool]  # "bos", "eos" -> add_*_token
    chat_template: str | None

    def token_id(self, text: str) -> int | None:
        """The id of an added (CONTROL / USER_DEFINED) token with this text, if any."""
        for i, (token, token_type) in enumerate(zip(self.tokens, self.token_types)):
            if token == text and token_type in (CONTROL, USER_DEFINED):
                return i
        return None

    def add_to(self, writer) -> None:
        """The tokenizer.ggml.* keys, in the order llama.cpp's converter writes them."""
        writer.add_string("tokenizer.ggml.model", "gpt2")
        writer.add_string("tokenizer.ggml.pre", self.pre)
        writer.add_array("tokenizer.ggml.tokens", ValueType.STRING, self.tokens)
        writer.add_array("tokenizer.ggml.token_type", ValueType.INT32, self.token_types)
        writer.add_array("tokenizer.ggml.merges", ValueType.STRING, self.merges)
        for kind, token_id in self.special_ids.items():
            writer.add_uint32(SPECIAL_ID_KEYS[kind], token_id)
        for kind, value in self.add_special.items():
            writer.add_bool(f"tokenizer.ggml.add_{kind}_token", value)
        if self.chat_template is not None:
            writer.add_string("tokenizer.chat_template", self.chat_template)


def load_vocab(hf_dir: Path, vocab_size: int, config: dict) -> Vocab:
    """Read the tokenizer files of `hf_dir` for a model with `vocab_size` embedding rows."""
    config_path = hf_dir / TOKENIZER_CONFIG_FILE
    tokenizer_config = read_json(config_path)
    tokenizer_class = tokenizer_config.get("tokenizer_class")
    if tokenizer_class not in BPE_TOKENIZER_CLASSES:
        raise ConvertError(
            config_path,
            f"'tokenizer_class' is {tokenizer_class!r}, expected one of {', '.join(BPE_TOKENIZER_CLASSES)} "
            "(only byte-level BPE vocabularies are supported)",
        )
    tokenizer_json = read_json(hf_dir / TOKENIZER_FILE, required=False)
    if tokenizer_json is not None:
        source = hf_dir / TOKENIZER_FILE
        base, merges = _bpe_from_tokenizer_json(source, tokenizer_json)
    else:
        source = hf_dir / VOCAB_FILE
        base, merges = _vocab_json(source), _merges_txt(hf_dir / MERGES_FILE)
    added = _added_tokens(hf_dir, tokenizer_config, tokenizer_json, vocab_size)

    tokens, token_types = _token_list(base, added, vocab_size, source)
    return Vocab(
        tokens=tokens,
        token_types=token_types,
        merges=merges,
        pre=_pre_tokenizer(tokens, token_types, source),
        special_ids=_special_ids(tokenizer_config, added, config, vocab_size),
        add_special=_add_special(tokenizer_config, tokenizer_json),
        chat_template=_chat_template(hf_dir, config_path, tokenizer_config),
    )


def _vocab_json(path: Path) -> dict[str, int]:
    vocab = read_json(path)
    if not all(type(i) is int and i >= 0 for i in vocab.values()):
        raise ConvertError(path, "expected an object of token -> non-negative integer id")
    return vocab


def _merges_txt(path: Path) -> list[str]:
    """ "left right" lines in rank order; an optional "#version" header line is skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConvertError(path, "missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(path, f"cannot read: {e}") from None
    merges = []
    for number, line in enumerate(lines, start=1):
        if (number == 1 and line.startswith("#")) or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConvertError(path, f"line {number}: expected two tokens, found {line!r}")
        merges.append(f"{parts[0]} {parts[1]}")
    return merges


def _bpe_from_tokenizer_json(path: Path, tokenizer: dict) -> tuple[dict[str, int], list[str]]:
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        found = model.get("type") if isinstance(model, dict) else model
        raise ConvertError(path, f"'model.type' is {found!r}, expected 'BPE'")
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not all(type(i) is int and i >= 0 for i in vocab.values()):
        raise ConvertError(path, "'model.vocab' is not an object of token -> non-negative integer id")
    if not isinstance(merges, list):
        raise ConvertError(path, "'model.merges' is not a list")
    return vocab, [_merge_string(path, merge) for merge in merges]


def _merge_string(path: Path, merge) -> str:
    """A merge as "left right". tokenizers >= 0.20 stores pairs; a space inside a pair element
    is written as U+0120 like gguf-py does (byte-level vocabularies have none)."""
    if isinstance(merge, str):
        return merge
    if isinstance(merge, list) and len(merge) == 2 and all(isinstance(s, str) for s in merge):
        return " ".join(s.replace(" ", "\u0120") for s in merge)
    raise ConvertError(path, f"'model.merges' entry {merge!r} is neither \"a b\" nor [a, b]")


def _added_tokens(
    hf_dir: Path, tokenizer_config: dict, tokenizer_json: dict | None, vocab_size: int
) -> dict[int, AddedToken]:
    """id -> added token from every file that lists some; the files must agree on the text."""
    added: dict[int, AddedToken] = {}

    def add(path: Path, token_id, content, special) -> None:
        if type(token_id) is not int or token_id < 0 or not isinstance(content, str):
            raise ConvertError(path, f"added token {content!r} has id {token_id!r}")
        if token_id >= vocab_size:
            raise ConvertError(
                path,
                f"added token {content!r} has id {token_id}, "
                f"beyond the model's 'vocab_size' {vocab_size} (config.json)",
            )
        previous = added.get(token_id)
        if previous is not None and previous.content != content:
            raise ConvertError(
                path, f"added token id {token_id} is {content!r}, another file says {previous.content!r}"
            )
        added[token_id] = AddedToken(content, bool(special) or (previous is not None and previous.special))

    added_tokens_path = hf_dir / ADDED_TOKENS_FILE
    for content, token_id in (read_json(added_tokens_path, required=False) or {}).items():
        add(added_tokens_path, token_id, content, False)
    for entry in (tokenizer_json or {}).get("added_tokens") or []:
        add(hf_dir / TOKENIZER_FILE, entry.get("id"), entry.get("content"), entry.get("special"))
    config_path = hf_dir / TOKENIZER_CONFIG_FILE
    for key, entry in (tokenizer_config.get("added_tokens_decoder") or {}).items():
        if not key.isdecimal() or not isinstance(entry, dict):
            raise ConvertError(config_path, f"'added_tokens_decoder' entry {key!r} is not id -> token object")
        add(config_path, int(key), entry.get("content"), entry.get("special"))
    return added


def _looks_special(text: str) -> bool:
    """llama.cpp marks added tokens written like `<|...|>` CONTROL even when the tokenizer does
    not call them special (base.py does_token_look_special): Phi-4-mini's tool tokens."""
    return text.startswith("<|") and text.endswith("|>")


def _token_list(base: dict[str, int], added: dict[int, AddedToken], vocab_size: int, source: Path):
    by_id: dict[int, str] = {}
    for text, token_id in base.items():
        if token_id in by_id:
            raise ConvertError(
                source, f"token id {token_id} is given to both {by_id[token_id]!r} and {text!r}"
            )
        by_id[token_id] = text
    if max(by_id, default=-1) >= vocab_size:
        raise ConvertError(
            source, f"token id {max(by_id)} is beyond the model's 'vocab_size' {vocab_size} (config.json)"
        )
    tokens, token_types = [], []
    for token_id in range(vocab_size):
        if token_id in added:
            token = added[token_id]
            tokens.append(token.content)
            token_types.append(CONTROL if token.special or _looks_special(token.content) else USER_DEFINED)
        elif token_id in by_id:
            tokens.append(by_id[token_id])
            token_types.append(NORMAL)
        else:
            tokens.append(f"[PAD{token_id}]")
            token_types.append(UNUSED)
    return tokens, token_types


def _pre_tokenizer(tokens: list[str], token_types: list[int], source: Path) -> str:
    for (n, digest), name in PRE_TOKENIZERS.items():
        if len(tokens) < n or any(t != NORMAL for t in token_types[:n]):
            continue
        if hashlib.sha256("\n".join(tokens[:n]).encode("utf-8")).hexdigest() == digest:
            return name
    raise ConvertError(
        source, "unrecognized BPE vocabulary: its pre-tokenizer is unknown (supported: o200k_base, 'gpt-4o')"
    )


def _special_ids(
    tokenizer_config: dict, added: dict[int, AddedToken], config: dict, vocab_size: int
) -> dict[str, int]:
    """Special token ids: the `<kind>_token` text of tokenizer_config.json looked up among the
    added tokens, else config.json's `<kind>_token_id`; ids outside the vocabulary are skipped,
    as gguf-py does."""
    # Highest id first, so that the lowest id wins when two added tokens share a text.
    ids_by_text = {token.content: token_id for token_id, token in sorted(added.items(), reverse=True)}
    special = {}
    for kind in SPECIAL_TOKEN_TYPES:
        entry = tokenizer_config.get(f"{kind}_token")
        text = entry.get("content") if isinstance(entry, dict) else entry
        token_id = ids_by_text.get(text) if isinstance(text, str) else None
        if token_id is None:
            token_id = config.get(f"{kind}_token_id")
        if type(token_id) is int and 0 <= token_id < vocab_size:
            special[kind] = token_id
    return special


def _add_special(tokenizer_config: dict, tokenizer_json: dict | None) -> dict[str, bool]:
    """add_bos/add_eos: tokenizer_config.json's flags; a ByteLevel post-processor in
    tokenizer.json adds nothing, so it implies false for both (gguf-py SpecialVocab)."""
    add = {}
    for kind in SPECIAL_TOKEN_TYPES:
        value = tokenizer_config.get(f"add_{kind}_token")
        if isinstance(value, bool):
            add[kind] = value
    processor = (tokenizer_json or {}).get("post_processor") or {}
    if any(p.get("type") == "ByteLevel" for p in processor.get("processors", [processor])):
        add = {"bos": add.get("bos", False), "eos": add.get("eos", False), **add}
    return add


def _chat_template(hf_dir: Path, config_path: Path, tokenizer_config: dict) -> str | None:
    template = tokenizer_config.get("chat_template")
    if template is None and (hf_dir / "chat_template.jinja").is_file():
        template = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise ConvertError(
            config_path, "'chat_template' is not a string (named template lists are not supported)"
        )
    return template
