"""pyphi.sampling: exact distributions after each filter on hand-made logits (expected values
derived by hand in each test), penalties on hand-made histories, seeded reproducibility, greedy,
and stop-string holdback."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyphi import sampling as S

RTOL = 1e-6  # float32 logits; probabilities are computed in float64


def f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def probs_of(values) -> np.ndarray:
    """Logits whose softmax is `values` (which sum to 1)."""
    return f32(np.log(values))


def normalized(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values / values.sum()


# --- filters -----------------------------------------------------------------------------------

def test_top_k_2_is_softmax_of_the_two_largest():
    # softmax([2, 1]) = [e^2, e^1] / (e^2 + e^1) = [1, e^-1] / (1 + e^-1)
    got = S.softmax(S.apply_top_k(f32([2, 1, 0, -1]), 2))
    expected = np.array([1, math.exp(-1), 0, 0]) / (1 + math.exp(-1))
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_top_k_keeps_ties_and_disables_at_zero_or_vocab():
    logits = f32([1, 3, 3, 0])
    assert np.isfinite(S.apply_top_k(logits, 1)).tolist() == [False, True, True, False]
    for k in (0, 4, 10):
        np.testing.assert_array_equal(S.apply_top_k(logits, k), logits)


def test_top_k_does_not_modify_its_input():
    logits = f32([2, 1, 0, -1])
    S.apply_top_k(logits, 1)
    np.testing.assert_array_equal(logits, f32([2, 1, 0, -1]))


@pytest.mark.parametrize("p, kept", [
    (0.4, [0.5]),                # 0.5 >= 0.4 at the first token
    (0.7, [0.5, 0.3]),           # 0.5 < 0.7 <= 0.8
    (0.85, [0.5, 0.3, 0.15]),    # 0.8 < 0.85 <= 0.95
    (0.99, [0.5, 0.3, 0.15, 0.05]),
    (1.0, [0.5, 0.3, 0.15, 0.05]),
])
def test_top_p_keeps_the_smallest_prefix_reaching_p(p, kept):
    base = [0.5, 0.3, 0.15, 0.05]
    got = S.softmax(S.apply_top_p(probs_of(base), p))
    expected = np.zeros(4)
    expected[:len(kept)] = normalized(kept)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)


def test_top_p_is_order_independent():
    # the same distribution, permuted: tokens 3 (0.5) and 0 (0.3) are the nucleus for p = 0.7
    got = S.softmax(S.apply_top_p(probs_of([0.3, 0.15, 0.05, 0.5]), 0.7))
    np.testing.assert_allclose(got, [0.375, 0, 0, 0.625], rtol=RTOL, atol=1e-12)


def test_top_p_partial_sort_keeps_the_same_set_as_a_full_sort(monkeypatch):
    rng = np.random.default_rng(5)
    cases = [(rng.normal(0, rng.uniform(0.5, 6), 5000).astype(np.float32), rng.uniform(0.05, 0.99))
             for _ in range(100)]
    partial = [S.apply_top_p(logits, p) for logits, p in cases]
    monkeypatch.setattr(S, "TOP_P_PARTIAL_SORT", 10**9)
    for (logits, p), got in zip(cases, partial):
        np.testing.assert_array_equal(got, S.apply_top_p(logits, p))


@pytest.mark.parametrize("min_p, kept", [
    (0.25, [0.5, 0.3, 0.15]),   # threshold 0.25 * 0.5 = 0.125
    (0.5, [0.5, 0.3]),          # threshold 0.25
    (0.9, [0.5]),               # threshold 0.45
    (0.0, [0.5, 0.3, 0.15, 0.05]),
])
def test_min_p_keeps_tokens_above_a_fraction_of_the_top(min_p, kept):
    got = S.softmax(S.apply_min_p(probs_of([0.5, 0.3, 0.15, 0.05]), min_p))
    expected = np.zeros(4)
    expected[:len(kept)] = normalized(kept)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)


def test_temperature_divides_the_logits():
    # [2, 1, 0, -1] / 2 = [1, 0.5, 0, -0.5]
    got = S.softmax(S.apply_temperature(f32([2, 1, 0, -1]), 2.0))
    expected = normalized(np.exp([1, 0.5, 0, -0.5]))
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_chain_order_is_filters_then_temperature():
    # probs [0.5, 0.3, 0.15, 0.05], top-p 0.7, temperature 2. Filters first (llama.cpp): the
    # nucleus is {0.5, 0.3}; then T = 2 gives weights sqrt(0.5), sqrt(0.3). (Temperature first,
    # as HF does, would flatten to [.379, .294, .208, .120] and keep three tokens.)
    got = S.softmax(S.warp_logits(probs_of([0.5, 0.3, 0.15, 0.05]), temperature=2.0, top_p=0.7))
    expected = np.zeros(4)
    expected[:2] = normalized([math.sqrt(0.5), math.sqrt(0.3)])
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)


def test_chain_top_k_then_top_p_then_min_p():
    # top-k 3 -> [0.5, 0.3, 0.15] / 0.95 = [.526, .316, .158]; top-p 0.8: .526 < .8 <= .842
    # keeps two; min-p 0.7 of that: threshold 0.7 * 0.625 = 0.4375 > 0.375 keeps one.
    logits = probs_of([0.5, 0.3, 0.15, 0.05])
    two = S.softmax(S.warp_logits(logits, temperature=1.0, top_k=3, top_p=0.8))
    np.testing.assert_allclose(two, [0.625, 0.375, 0, 0], rtol=RTOL, atol=1e-12)
    one = S.softmax(S.warp_logits(logits, temperature=1.0, top_k=3, top_p=0.8, min_p=0.7))
    np.testing.assert_allclose(one, [1, 0, 0, 0], rtol=RTOL, atol=1e-12)


# --- drawing -----------------------------------------------------------------------------------

def random_logits(seed: int, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=n).astype(np.float32)


def draws(sampler, n: int = 200) -> list[int]:
    return [sampler(random_logits(step)) for step in range(n)]


def test_same_seed_same_tokens_different_seed_differs():
    options = dict(temperature=1.0, top_k=50, top_p=0.95, min_p=0.01)
    first = draws(S.make_sampler(**options, seed=1234))
    again = draws(S.make_sampler(**options, seed=1234))
    other = draws(S.make_sampler(**options, seed=4321))
    assert first == again
    assert first != other


def test_temperature_zero_is_argmax_whatever_the_filters():
    for step in range(50):
        logits = random_logits(step)
        for sampler in (S.make_sampler(), S.make_sampler(0.0, top_k=5, top_p=0.5, min_p=0.3, seed=7)):
            assert sampler(logits) == int(np.argmax(logits))
    assert S.make_sampler()(f32([1, 5, 5, 2])) == 1  # ties: lowest id


def test_draws_follow_the_distribution_and_skip_removed_tokens():
    sampler = S.make_sampler(temperature=1.0, top_k=3, seed=0)
    logits = probs_of([0.5, 0.3, 0.15, 0.05])
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=4)
    assert counts[3] == 0
    np.testing.assert_allclose(counts[:3] / 20000, normalized([0.5, 0.3, 0.15]), atol=0.015)


def test_zero_mass_tokens_are_never_drawn():
    rng = np.random.default_rng(0)
    logits = f32([-np.inf, 0.0, -np.inf, -np.inf])
    assert {S.sample_categorical(logits, rng) for _ in range(200)} == {1}


@pytest.mark.parametrize("options", [
    dict(temperature=-0.1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=1.5)])
def test_invalid_sampler_options_raise(options):
    with pytest.raises(ValueError):
        S.make_sampler(**options)


# --- logits processors -------------------------------------------------------------------------

def run(processors, tokens, logits):
    for processor in processors:
        logits = processor(np.asarray(tokens), logits)
    return logits


def test_repetition_penalty_divides_positive_multiplies_negative_once_per_token():
    # tokens 0 (twice), 1, 3 seen: 2 / 2 = 1, -1 * 2 = -2, 0.5 untouched, 3 / 2 = 1.5
    got = run(S.make_logits_processors(repetition_penalty=2.0), [0, 1, 0, 3], f32([2, -1, 0.5, 3]))
    np.testing.assert_array_equal(got, f32([1, -2, 0.5, 1.5]))


def test_repetition_penalty_looks_at_the_last_n_tokens():
    # window 2 of [0, 1, 0, 3] is [0, 3]: token 1 is no longer penalised
    processors = S.make_logits_processors(repetition_penalty=2.0, penalty_context_size=2)
    np.testing.assert_array_equal(run(processors, [0, 1, 0, 3], f32([2, -1, 0.5, 3])), f32([1, -1, 0.5, 1.5]))
    whole = S.make_logits_processors(repetition_penalty=2.0, penalty_context_size=None)
    np.testing.assert_array_equal(run(whole, [1] + [0] * 100, f32([2, -1, 0.5, 3])), f32([1, -2, 0.5, 3]))
    off = S.make_logits_processors(repetition_penalty=2.0, penalty_context_size=0)
    np.testing.assert_array_equal(run(off, [0, 1], f32([2, -1, 0.5, 3])), f32([2, -1, 0.5, 3]))


def test_frequency_and_presence_penalties_openai_formula():
    # counts: token 0 twice, token 1 once. logit -= count * 0.5 + 0.25
    #   token 0: 2 - 1.0 - 0.25 = 0.75; token 1: -1 - 0.5 - 0.25 = -1.75
    processors = S.make_logits_processors(frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_array_equal(run(processors, [0, 1, 0], f32([2, -1, 0.5, 3])), f32([0.75, -1.75, 0.5, 3]))


def test_logit_bias_adds_and_accepts_string_keys():
    processors = S.make_logits_processors(logit_bias={1: 5.0, "2": -100})
    np.testing.assert_array_equal(run(processors, [], f32([2, -1, 0.5, 3])), f32([2, 4, -99.5, 3]))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        run(S.make_logits_processors(logit_bias={4: 1.0}), [], f32([2, -1, 0.5, 3]))


def test_processors_apply_bias_then_penalties():
    # bias first (llama.cpp puts its logit-bias sampler ahead of the chain): token 0 is
    # 1 - 2 = -1, then, repeated, multiplied by the penalty: -1 * 1.5 = -1.5
    processors = S.make_logits_processors(logit_bias={0: -2.0}, repetition_penalty=1.5)
    np.testing.assert_array_equal(run(processors, [0], f32([1, 0, 0, 0])), f32([-1.5, 0, 0, 0]))


def test_disabled_options_add_no_processor():
    assert S.make_logits_processors() == []


# --- stop strings ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, stops, expected", [
    ("Hello", ["###"], (5, False)),                  # nothing like a stop string
    ("Hello #", ["###"], (6, False)),                # hold back a possible start
    ("Hello ##", ["###"], (6, False)),
    ("Hello ###", ["###"], (6, True)),               # complete: cut before it
    ("Hello ### and more", ["###"], (6, True)),      # what follows is dropped too
    ("a<|end", ["<|end|>", "\n\n"], (1, False)),
    ("a\n", ["<|end|>", "\n\n"], (1, False)),
    ("a\n\nb<|end|>", ["<|end|>", "\n\n"], (1, True)),  # earliest of several
    ("xab", ["abc", "ab"], (1, True)),               # a stop that is a prefix of another
    ("xa", ["abc", "ab"], (1, False)),
    ("xabc", ["abc", "ab"], (1, True)),
    ("", ["###"], (0, False)),
    ("no stops", [], (8, False)),
])
def test_check_stop_strings(text, stops, expected):
    assert S.check_stop_strings(text, stops) == expected


def test_stop_string_split_across_chunks_never_leaks():
    chunks = ["The answer", " is 4.", "\nUs", "er:", " ignored"]
    text, emitted = "", ""
    for chunk in chunks:
        text += chunk
        end, stopped = S.check_stop_strings(text, ["\nUser:"])
        emitted += text[len(emitted):end]
        if stopped:
            break
    assert stopped
    assert emitted == "The answer is 4."


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError):
        S.check_stop_strings("abc", [""])
