"""A seeded, offline text corpus for the tokenizer tests (over 1 MB of UTF-8).

Made from what every test machine has: the Python standard library's own sources (English prose
in docstrings and comments, code, indentation), plus text generated from `unicodedata` for the
cases a tokenizer gets wrong: scripts with combining marks (Devanagari, Bengali, Thai), CJK,
Arabic, Hebrew, Cyrillic, Greek; emoji with modifiers, ZWJ sequences, flags and keycaps; digit
runs in several scripts; whitespace runs (`\\r\\n`, tabs, trailing spaces, NBSP, ideographic
space); mixed case with contractions (`ÜBER`, `AÉB`, `'S`, `'ll`); and Phi-4-mini's added-token
literals with text and whitespace around them. Nothing is downloaded.

`corpus()` returns a list of documents (a few KB each), the same list on every call with the same
Python installation.
"""

from __future__ import annotations

import functools
import random
import sysconfig
import unicodedata
from pathlib import Path

SEED = 20250302
MIN_BYTES = 1 << 20
STDLIB_BYTES = 600_000  # the rest is generated

# Code point blocks per script: (first, last).
SCRIPTS = {
    "latin": (0x00C0, 0x024F),
    "greek": (0x0370, 0x03FF),
    "cyrillic": (0x0400, 0x04FF),
    "hebrew": (0x0590, 0x05FF),
    "arabic": (0x0600, 0x06FF),
    "devanagari": (0x0900, 0x097F),
    "bengali": (0x0980, 0x09FF),
    "thai": (0x0E00, 0x0E7F),
    "hangul": (0xAC00, 0xD7A3),
    "kana": (0x3040, 0x30FF),
    "cjk": (0x4E00, 0x9FFF),
    "fraktur": (0x1D504, 0x1D537),  # 4-byte letters, split across byte-level tokens
}
EMOJI_BLOCKS = (
    (0x1F300, 0x1F5FF),
    (0x1F600, 0x1F64F),
    (0x1F680, 0x1F6FF),
    (0x1F900, 0x1F9FF),
    (0x1FA70, 0x1FAFF),
)
SKIN_TONES = "\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff"
ZWJ, VS16, KEYCAP = "\u200d", "\ufe0f", "\u20e3"
DIGIT_ZEROS = (0x30, 0x660, 0x6F0, 0x966, 0x9E6, 0xE50, 0xFF10)  # ASCII, Arabic-Indic, ..., fullwidth
WHITESPACE_PARTS = (
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\n\n",
    "\u00a0",
    "\u3000",
    "\x0b",
    "\x0c",
    "\u2028",
    " \n",
    "\t\n",
)
CASED_WORDS = (
    "über",
    "aéb",
    "école",
    "straße",
    "istanbul",
    "ǆemal",
    "naïve",
    "œuvre",
    "ÿes",
    "hello",
    "world",
)
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'Re", "'VE", "’s", "'x")
ADDED_LITERALS = (
    "<|endoftext|>",
    "<|endofprompt|>",
    "<|assistant|>",
    "<|end|>",
    "<|user|>",
    "<|system|>",
    "<|tool|>",
    "<|/tool|>",
    "<|tool_call|>",
    "<|/tool_call|>",
    "<|tool_response|>",
    "<|tag|>",
    "<|endoftext17|>",
    "[PAD200030]",
    "<|end",
    "|>",
)
# Real sentences, for words as they occur (the generated script text is random letters and marks).
SENTENCES = (
    "नमस्ते दुनिया, कृपया मेरी मदद करें। क्या आप हिंदी बोलते हैं?",
    "আমি বাংলায় গান গাই। স্বাধীনতা দিবসের শুভেচ্ছা!",
    "สวัสดีครับ ยินดีต้อนรับสู่ประเทศไทย วันนี้อากาศดีมาก",
    "مرحبا بالعالم، هذا نص عربي للاختبار. كيف حالك اليوم؟",
    "שלום עולם, זהו טקסט בעברית.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε· ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "今天天气很好，我们去公园散步吧。東京都の人口は約千四百万人です。",
    "안녕하세요, 세계! 한국어 문장을 토큰화합니다.",
    "Tiếng Việt có dấu: Trăm năm trong cõi người ta.",
    "I'M SURE THEY'LL SAY IT'S FINE; WE'VE DONE IT. You'd've KNOWN. JOHN'S car isn't HIS'N.",
)


def _letters_and_marks(first: int, last: int) -> tuple[list[str], list[str]]:
    letters, marks = [], []
    for cp in range(first, last + 1):
        category = unicodedata.category(chr(cp))
        if category[0] == "L":
            letters.append(chr(cp))
        elif category[0] == "M":
            marks.append(chr(cp))
    return letters, marks


@functools.lru_cache(maxsize=None)
def _script_tables():
    return {name: _letters_and_marks(*block) for name, block in SCRIPTS.items()}


def _word(rng: random.Random, letters: list[str], marks: list[str]) -> str:
    out = []
    for _ in range(rng.randint(1, 8)):
        out.append(rng.choice(letters))
        if marks and rng.random() < 0.4:
            out.append(rng.choice(marks))
    return "".join(out)


def _script_text(rng: random.Random, n_words: int) -> str:
    tables = _script_tables()
    words = []
    for _ in range(n_words):
        letters, marks = tables[rng.choice(list(tables))]
        words.append(_word(rng, letters, marks))
        words.append(rng.choice((" ", " ", " ", ", ", ". ", "\n", "। ", "، ", "。", "")))
    return "".join(words)


def _emoji(rng: random.Random) -> str:
    first, last = rng.choice(EMOJI_BLOCKS)
    base = chr(rng.randint(first, last))
    kind = rng.randrange(6)
    if kind == 0:
        return base + rng.choice(SKIN_TONES)
    if kind == 1:
        return base + ZWJ + chr(rng.randint(first, last)) + VS16
    if kind == 2:  # a flag: two regional indicators
        return "".join(chr(0x1F1E6 + rng.randrange(26)) for _ in range(2))
    if kind == 3:
        return rng.choice("0123456789#*") + VS16 + KEYCAP
    return base


def _digits(rng: random.Random) -> str:
    zero = rng.choice(DIGIT_ZEROS)
    run = "".join(chr(zero + rng.randrange(10)) for _ in range(rng.randint(1, 24)))
    return run + rng.choice(("", ".", ",", " ", "-", "/", "e", "%", "\n"))


def _cased(rng: random.Random) -> str:
    word = rng.choice(CASED_WORDS)
    style = rng.randrange(4)
    word = (word.upper(), word.title(), word, "".join(c.upper() if rng.random() < 0.5 else c for c in word))[
        style
    ]
    return word + (rng.choice(CONTRACTIONS) if rng.random() < 0.4 else "")


def _mixed_document(rng: random.Random, n_parts: int) -> str:
    makers = (
        lambda: _script_text(rng, rng.randint(1, 12)),
        lambda: _emoji(rng),
        lambda: _digits(rng),
        lambda: rng.choice(WHITESPACE_PARTS) * rng.randint(1, 4),
        lambda: _cased(rng),
        lambda: rng.choice(SENTENCES) + rng.choice(WHITESPACE_PARTS),
        lambda: rng.choice(ADDED_LITERALS),
        lambda: rng.choice(ADDED_LITERALS) + rng.choice(WHITESPACE_PARTS) * rng.randint(1, 3),
        lambda: rng.choice(
            ("def f(x):\n    return x\n", "a[i] += b;", "if (x != y) {", "}}\n", "// c\n", "#!/bin/sh")
        ),
    )
    return "".join(rng.choice(makers)() for _ in range(n_parts))


def _stdlib_documents(limit: int) -> list[str]:
    """Python sources of the standard library in sorted order, cut into ~4 KB documents."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for start in range(0, len(text), 4096):
            docs.append(text[start : start + 4096])
            total += len(docs[-1].encode("utf-8"))
            if total >= limit:
                return docs
    return docs


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[str, ...]:
    rng = random.Random(SEED)
    docs = _stdlib_documents(STDLIB_BYTES)
    total = sum(len(d.encode("utf-8")) for d in docs)
    while total < MIN_BYTES:
        docs.append(_mixed_document(rng, rng.randint(50, 400)))
        total += len(docs[-1].encode("utf-8"))
    return tuple(docs)


def corpus() -> list[str]:
    return list(_corpus())
