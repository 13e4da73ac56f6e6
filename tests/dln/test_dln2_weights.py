"""DLN-2's importance weights, checked through `dln2_step` itself against exact enumeration.

A fake model with known token distributions over a 3-symbol vocabulary (`a`, `b`, end) and hidden texts of at
most 2 tokens: its support has 7 sequences, so q_T(h | x, y), p(h | x), p(y | x, h) and log p(y | x) are sums
over a few terms. The weights must be log w = log p(y | x, h) + log p(h | x) - log q_T(h | x, y), with q_T the
distribution the hidden text was sampled from (temperature T, end token included).
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np
import pytest

from dln.config import build_config
from dln.dln1 import Batch
from dln.dln2 import POSTERIOR_TEMPLATE, dln2_step
from dln.layers import LanguageLayer
from dln.lm.base import LanguageModel, ScoredSample
from dln.train_config import TrainConfig

END = 2
SYMBOLS = {0: "a", 1: "b"}
MAX_TOKENS = 2
LABELS = ["bad", "good"]


def unit(*key) -> np.ndarray:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.frombuffer(digest[:24], dtype=np.uint64).astype(np.float64) / 2.0**64  # 3 numbers in [0, 1)


def next_logits(context, prefix) -> np.ndarray:
    return 3.0 * unit("next", str(context), tuple(prefix))


def log_softmax(x: np.ndarray) -> np.ndarray:
    return x - np.logaddexp.reduce(x)


def sequence_logprob(context, ids, temperature: float = 1.0) -> float:
    return float(sum(log_softmax(next_logits(context, ids[:t]) / temperature)[i] for t, i in enumerate(ids)))


def support() -> list[tuple[int, ...]]:
    """Every hidden text: an end token after 0 or 1 symbols, or 2 symbols (cut at MAX_TOKENS)."""
    ended = [(END,)] + [(s, END) for s in SYMBOLS]
    return ended + list(itertools.product(SYMBOLS, repeat=2))


def text_of(ids) -> str:
    return "".join(SYMBOLS.get(i, "") for i in ids)


class FakeModel(LanguageModel):
    """Samples and scores from `next_logits`; labels get fixed scores per (context, label)."""

    uri = "fake:"

    def _sample(self, prompts, options, top_p):
        assert top_p == 1.0
        out = []
        for prompt in prompts:
            rng = np.random.default_rng(int(unit("rng", str(prompt), options.seed)[0] * 2**32))
            row = []
            for _ in range(options.n):
                ids: list[int] = []
                while len(ids) < options.max_tokens and (not ids or ids[-1] != END):
                    probs = np.exp(log_softmax(next_logits(prompt, ids) / options.temperature))
                    ids.append(int(rng.choice(3, p=probs / probs.sum())))
                logq = sequence_logprob(prompt, ids, options.temperature)
                row.append(ScoredSample(text_of(ids), tuple(ids), logq))
            out.append(row)
        return out

    def _score_ids(self, contexts, continuations):
        return [
            [sequence_logprob(c, ids[: t + 1]) - sequence_logprob(c, ids[:t]) for t in range(len(ids))]
            for c, ids in zip(contexts, continuations)
        ]

    def _score(self, contexts, continuations):
        return [[-3.0 * float(unit("label", str(c), x)[0])] for c, x in zip(contexts, continuations)]

    def _generate(self, prompts, options):
        return [["Answer carefully."] * options.n for _ in prompts]


def setup(temperature: float):
    config = build_config(
        TrainConfig,
        {
            "method": "dln2",
            "task": "sentiment",
            "batch_size": 1,
            "num_candidates": 2,
            "num_hidden_samples": 2,
            "hidden_max_tokens": MAX_TOKENS,
            "hidden_temperature": temperature,
        },
    )
    hidden = LanguageLayer(config.hidden_prompt, config.hidden_template)
    output = LanguageLayer(config.initial_prompt, config.template)
    batch = Batch(["A warm film."], ["good"], [LABELS])
    return config, hidden, output, batch


def exact_terms(config, hidden, output, batch, ids):
    """(log p(y | x, h), log p(h | x), log q_T(h | x, y)) of one hidden text, from the known distributions."""
    x, y = batch.inputs[0], batch.targets[0]
    posterior = LanguageLayer(hidden.prompt, POSTERIOR_TEMPLATE, chat=hidden.chat)
    text = text_of(ids).strip() or "(empty)"
    context = output.render(x, hidden=text)
    label_scores = np.array(
        [-3.0 * float(unit("label", str(context), output.label_text(lab))[0]) for lab in LABELS]
    )
    log_p_y = float(log_softmax(label_scores)[LABELS.index(y)])
    log_p_h = sequence_logprob(hidden.render(x), ids)
    log_q = sequence_logprob(posterior.render(x, target=y), ids, config.hidden_temperature)
    return log_p_y, log_p_h, log_q


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_step_logs_the_bounds_of_the_exact_weights_of_its_samples(temperature):
    config, hidden, output, batch = setup(temperature)
    model = FakeModel()
    seed = 3
    posterior = LanguageLayer(hidden.prompt, POSTERIOR_TEMPLATE, chat=hidden.chat)
    drawn = model.sample(
        [posterior.render(batch.inputs[0], target=batch.targets[0])],
        n=2,
        temperature=temperature,
        max_tokens=MAX_TOKENS,
        seed=seed,
    )[0]
    log_w = np.array(
        [
            sum((a, b, -c))
            for a, b, c in (exact_terms(config, hidden, output, batch, s.token_ids) for s in drawn)
        ]
    )
    step = dln2_step(hidden, output, model, model, batch, config, LABELS, seed=seed)
    assert step["elbo"] == pytest.approx(log_w.mean(), abs=1e-9)
    assert step["iw_bound"] == pytest.approx(np.logaddexp.reduce(log_w) - math.log(2), abs=1e-9)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_logged_bounds_are_bounds_in_expectation(temperature):
    """E_q[ELBO] <= E_q[IW_2] <= log p(y | x) by enumeration, and the step's logged values average to them."""
    config, hidden, output, batch = setup(temperature)
    terms = {ids: exact_terms(config, hidden, output, batch, ids) for ids in support()}
    log_q = {ids: t[2] for ids, t in terms.items()}
    assert math.isclose(sum(math.exp(v) for v in log_q.values()), 1.0, abs_tol=1e-9)
    log_w = {ids: t[0] + t[1] - t[2] for ids, t in terms.items()}
    log_evidence = np.logaddexp.reduce([t[0] + t[1] for t in terms.values()])  # log Σ_h p(h | x) p(y | x, h)
    exact_elbo = sum(math.exp(log_q[h]) * log_w[h] for h in terms)
    exact_iw = sum(
        math.exp(log_q[h1] + log_q[h2]) * (np.logaddexp(log_w[h1], log_w[h2]) - math.log(2))
        for h1 in terms
        for h2 in terms
    )
    assert exact_elbo <= exact_iw <= log_evidence
    model = FakeModel()
    runs = [
        dln2_step(*setup(temperature)[1:3], model, model, batch, config, LABELS, seed=s) for s in range(400)
    ]
    elbo = np.array([r["elbo"] for r in runs])
    iw = np.array([r["iw_bound"] for r in runs])
    assert abs(elbo.mean() - exact_elbo) < 4 * elbo.std() / math.sqrt(len(runs)) + 1e-9
    assert abs(iw.mean() - exact_iw) < 4 * iw.std() / math.sqrt(len(runs)) + 1e-9


def test_per_token_weights_divide_the_hidden_terms_by_the_length():
    config, hidden, output, batch = setup(0.7)
    config.hidden_weights = "per_token"
    model = FakeModel()
    posterior = LanguageLayer(hidden.prompt, POSTERIOR_TEMPLATE, chat=hidden.chat)
    drawn = model.sample(
        [posterior.render(batch.inputs[0], target=batch.targets[0])],
        n=2,
        temperature=0.7,
        max_tokens=2,
        seed=5,
    )[0]
    log_w = []
    for s in drawn:
        log_p_y, log_p_h, log_q = exact_terms(config, hidden, output, batch, s.token_ids)
        log_w.append(log_p_y + (log_p_h - log_q) / len(s.token_ids))
    step = dln2_step(hidden, output, model, model, batch, config, LABELS, seed=5)
    assert step["elbo"] == pytest.approx(np.mean(log_w), abs=1e-9)
