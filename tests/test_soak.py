"""Soak: a scripted chat session through pyphi-chat's own session object (`chat_cli.Chat`) on
the tiny model, many turns of greedy answers with the cache reused between turns, `/clear`
every few turns and the context shifted when it fills, with the resident set sampled along the
way. After warm-up the RSS must grow by less than 1 MB per 1,000 tokens (a least-squares slope
over the samples), and the answers since the last `/clear` must equal those of a fresh session
replaying the same turns (the cache reuse and the shifts changed nothing).

The default run is short (SOAK_TOKENS); `pytest -m soak tests/test_soak.py` runs the
10,000-token session and prints its RSS figures.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from pyphi.chat_cli import COMMANDS, Chat
from pyphi.llama import Llama

N_CTX = 256  # small, so that the session shifts the context many times
ANSWER_TOKENS = 24
SOAK_TOKENS = 2_500
LONG_SOAK_TOKENS = 10_000
WARMUP_TOKENS = 1_000
MAX_GROWTH_PER_1000 = 1 << 20
CLEAR_EVERY = 7  # turns
PAGE = os.sysconf("SC_PAGE_SIZE")
# <|end|>, <|endoftext|> never sampled: every answer is ANSWER_TOKENS long
NO_STOP = {200020: -100.0, 199999: -100.0}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _question(turn: int) -> str:
    topics = ["the sea", "prime numbers", "a red bicycle", "tomorrow's weather", "the history of tea"]
    return f"Turn {turn}: tell me about {topics[turn % len(topics)]}. " + "Please be detailed. " * (turn % 4)


def _session(gguf):
    """A Llama and the REPL's Chat over it. No added token (the random model likes repeating
    `<|assistant|>`, which answers do not show) and no id that decodes to nothing is ever sampled:
    every answer is ANSWER_TOKENS tokens of text, so the conversation grows and the replay
    compares real text."""
    llm = Llama(gguf, n_ctx=N_CTX, n_threads=1, context_shift=True)
    added = set(llm.tokenizer.added_tokens.values())
    silent = {i: -100.0 for i in range(llm.n_vocab()) if i in added or not llm.tokenizer.token_bytes(i)}
    return llm, Chat(llm, "You are a terse assistant.", {"max_tokens": ANSWER_TOKENS}, {**NO_STOP, **silent})


def _soak(gguf, total_tokens: int):
    llm, chat = _session(gguf)
    samples, answers_since_clear, questions_since_clear = [], [], []
    tokens = turn = shifts = 0
    with llm:
        while tokens < total_tokens:
            if turn and turn % CLEAR_EVERY == 0:
                COMMANDS["/clear"](chat, "")
                answers_since_clear, questions_since_clear = [], []
            question = _question(turn)
            chat.answer(question, io.StringIO())
            timings = chat.last_timings
            tokens += timings["prompt_n"] + timings["completion_tokens"]
            shifts += timings["prompt_tokens"] + timings["completion_tokens"] > N_CTX
            answers_since_clear.append(chat.messages[-1]["content"])
            questions_since_clear.append(question)
            samples.append((tokens, _rss()))
            turn += 1
    return samples, questions_since_clear, answers_since_clear, turn, shifts


def _growth_per_1000(samples) -> float:
    after = [(t, r) for t, r in samples if t >= WARMUP_TOKENS]
    t, r = np.array(after, dtype=float).T
    return float(np.polyfit(t, r, 1)[0] * 1000)


def _check(gguf, total_tokens):
    samples, questions, answers, turns, shifts = _soak(gguf, total_tokens)
    growth = _growth_per_1000(samples)
    first_after_warmup = next(r for t, r in samples if t >= WARMUP_TOKENS)
    print(f"\nsoak: {samples[-1][0]} tokens in {turns} turns, {shifts} turns past n_ctx={N_CTX}; RSS "
          f"{samples[0][1] / 2**20:.1f} MB after the first turn, {first_after_warmup / 2**20:.1f} MB at "
          f"{WARMUP_TOKENS} tokens, {samples[-1][1] / 2**20:.1f} MB at the end; fitted growth after warm-up "
          f"{growth / 2**10:.1f} KB per 1,000 tokens")
    assert shifts > 0 and turns > CLEAR_EVERY  # the session did shift and clear
    assert all(answers)
    assert growth < MAX_GROWTH_PER_1000, growth
    # a fresh session replaying the turns since the last /clear answers the same
    llm, chat = _session(gguf)
    with llm:
        for question in questions:
            chat.answer(question, io.StringIO())
        assert [m["content"] for m in chat.messages if m["role"] == "assistant"] == answers


def test_soak_short(gguf):
    _check(gguf, SOAK_TOKENS)


@pytest.mark.soak
def test_soak_10000_tokens(gguf):
    _check(gguf, LONG_SOAK_TOKENS)
