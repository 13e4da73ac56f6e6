"""Best-of-N math against brute force: the BoN density, the reward CDF, the subset weights, RLOO; rewards."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dln.errors import DLNError
from reasoning.bon.density import (
    best_of_n_weights,
    bon_log_density,
    smoothed_log_cdf,
    vbon_first_order,
    vbon_log_ratio,
)
from reasoning.bon.rewards import load_reward, score_batch
from reasoning.bon.trainer import rloo_advantages


def toy(size: int = 5, seed: int = 0):
    """A discrete reference policy over `size` completions with distinct rewards, and its exact CDF."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(size))
    rewards = rng.permutation(size).astype(float)
    cdf = np.array([pi[rewards < r].sum() for r in rewards])  # F(r) = P(r(y') < r)
    return pi, rewards, cdf


def density(pi, cdf, n):
    with np.errstate(divide="ignore"):
        return bon_log_density(torch.tensor(np.log(pi)), torch.tensor(np.log(cdf)), n).exp().numpy()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_bon_density_sums_to_one_and_equals_enumeration_of_every_n_tuple(n):
    pi, rewards, cdf = toy()
    exact = np.zeros(len(pi))
    for draws in itertools.product(range(len(pi)), repeat=n):  # every tuple of N draws, with its probability
        exact[max(draws, key=lambda y: rewards[y])] += np.prod(pi[list(draws)])
    got = density(pi, cdf, n)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(got, exact, atol=1e-12)


def test_bon_density_matches_simulated_best_of_n_draws():
    pi, rewards, cdf = toy(size=6, seed=3)
    n, trials = 4, 200_000
    rng = np.random.default_rng(1)
    draws = rng.choice(len(pi), size=(trials, n), p=pi)
    winners = draws[np.arange(trials), rewards[draws].argmax(axis=1)]
    empirical = np.bincount(winners, minlength=len(pi)) / trials
    expected = density(pi, cdf, n)
    standard_error = np.sqrt(expected * (1 - expected) / trials)
    assert np.all(np.abs(empirical - expected) <= 5 * standard_error + 1e-9)
    assert not np.allclose(expected, pi, atol=1e-2)  # BoN really moves mass to high rewards


def test_best_of_one_is_the_reference():
    pi, _, cdf = toy()
    np.testing.assert_allclose(density(pi, cdf, 1), pi, atol=1e-15)


def test_exact_log_ratio_and_its_first_order_form():
    pi, _, cdf = toy()
    n = 4
    log_pi, log_cdf = torch.tensor(np.log(pi)), torch.tensor(np.log(np.maximum(cdf, 1e-300)))
    np.testing.assert_allclose(
        vbon_log_ratio(log_pi, log_cdf, n), bon_log_density(log_pi, log_cdf, n) - log_pi
    )
    # as π_ref(y) -> 0 (long sequences) the ratio tends to log N + (N-1) log F
    tiny = torch.full((3,), -60.0, dtype=torch.float64)
    log_f = torch.log(torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64))
    np.testing.assert_allclose(vbon_log_ratio(tiny, log_f, n), vbon_first_order(log_f, n), atol=1e-9)
    # with a visible π the two differ, and the exact one is larger (all higher-order terms are positive)
    big = torch.log(torch.tensor([0.3], dtype=torch.float64))
    assert vbon_log_ratio(big, log_f[:1], n).item() > vbon_first_order(log_f[:1], n).item() + 0.1


def test_smoothed_cdf_on_known_cases():
    reference = [0.3, 0.1, 0.2]
    got = smoothed_log_cdf(reference, [0.25, 0.1, 0.0, 1.0, 0.3])
    # (#{r_j < r} + 1) / (M + 1): strictly below, add-one smoothed
    want = [math.log(3 / 4), math.log(1 / 4), math.log(1 / 4), math.log(4 / 4), math.log(3 / 4)]
    assert got == pytest.approx(want, abs=1e-15)
    assert smoothed_log_cdf([0.5] * 9, [0.5]) == [math.log(1 / 10)]  # ties count as not below
    with pytest.raises(ValueError):
        smoothed_log_cdf([], [0.0])


@pytest.mark.parametrize(("m", "n"), [(6, 1), (6, 3), (5, 5), (7, 2)])
def test_best_of_n_weights_equal_the_average_over_all_subsets(m, n):
    values = np.sort(np.random.default_rng(m * 10 + n).normal(size=m))
    by_subsets = np.mean([values[list(s)].max() for s in itertools.combinations(range(m), n)])
    weights = best_of_n_weights(m, n)
    assert sum(weights) == pytest.approx(1.0)
    assert float(np.dot(weights, values)) == pytest.approx(by_subsets, abs=1e-12)


def test_rloo_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    want = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(rloo_advantages(rewards), want)


def test_vader_reward_ranks_sentiment():
    vader = load_reward("vader")
    good = vader("The film", " was wonderful, moving and beautifully acted.")
    bad = vader("The film", " was a dull, painful waste of time.")
    assert good > 0.5 and bad < -0.5


def test_reward_specs_and_their_errors(tmp_path):
    assert load_reward("length")("p", "abcd") == 4.0
    script = tmp_path / "my_reward.py"
    script.write_text("def exclaim(prompt, completion):\n    return completion.count('!')\n")
    exclaim = load_reward(f"{script}:exclaim")
    assert score_batch(exclaim, ["a", "b"], ["hi!!", "no"]) == [2.0, 0.0]
    with pytest.raises(DLNError, match="unknown reward"):
        load_reward("no-such-reward")
    with pytest.raises(DLNError, match="no file"):
        load_reward(f"{tmp_path}/missing.py:f")
    with pytest.raises(DLNError, match="has no function"):
        load_reward(f"{script}:nothing")
    with pytest.raises(DLNError, match="sequence classifier"):
        load_reward(f"hf-classifier:{tmp_path}")


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_rank_based_bon_kl_equals_the_closed_form_for_distinct_rewards(n):
    from reasoning.bon.evaluate import expected_log_cdf

    m = 16
    weights = best_of_n_weights(m, n)
    distinct = [float(i) for i in range(m)]
    kl = float(np.dot(weights, vbon_first_order(expected_log_cdf(distinct), n).numpy()))
    assert kl == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
    tied = [float(i) for i in range(8)] + [8.0] * 8  # half the samples share the highest reward
    kl_tied = float(np.dot(weights, vbon_first_order(expected_log_cdf(tied), n).numpy()))
    assert kl_tied < kl


def test_a_transformers_sequence_classifier_is_a_reward(tmp_path):
    """A small randomly initialised classifier saved with the default tokenizer: the real loading path."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from dln.lm.default_model import ensure_default_model

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_default_model()))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    positive = load_reward(f"hf-classifier:{tmp_path / 'clf'}")  # default: the last label
    negative = load_reward(f"hf-classifier:{tmp_path / 'clf'}@negative")
    texts = ["a fine film", "dull and far too long, with nothing to say"]
    batch = score_batch(positive, ["p", "p"], texts)
    assert batch == pytest.approx([positive("p", t) for t in texts], abs=1e-5)  # padding changes nothing
    assert all(0.0 < p < 1.0 for p in batch)
    assert [p + negative("p", t) for p, t in zip(batch, texts)] == pytest.approx([1.0, 1.0])
    with pytest.raises(DLNError, match="not 'neutral'"):
        load_reward(f"hf-classifier:{tmp_path / 'clf'}@neutral")
