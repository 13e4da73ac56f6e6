"""The one token draw: the inverse CDF picks exactly the bucket its uniform falls in, and `draw` samples the
distribution softmax(top_p_filter(logits / T)) that the scorers score (checked by frequency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TopPLogitsWarper

from dln.lm.sampling import CDF_BLOCK, NUCLEUS_FIRST_K, draw, inverse_cdf, nucleus_threshold, sampling_logits


def reference_index(probs: np.ndarray, u: float) -> int:
    """The first i with float64 cdf(i) > u * total."""
    cdf = np.cumsum(probs.astype(np.float64))
    return int(np.searchsorted(cdf, u * cdf[-1], side="right"))


@pytest.mark.parametrize("vocab", [7, CDF_BLOCK, 3 * CDF_BLOCK + 5])
def test_inverse_cdf_picks_the_bucket_of_each_uniform(vocab):
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(64, vocab, generator=gen) ** 4
    probs[:, ::3] = 0.0  # tokens of probability 0, whole zero blocks among them for the small rows
    probs[1] = 0.0
    probs[1, -1] = 1.0  # all mass on the last token
    probs = probs / probs.sum(-1, keepdim=True)
    uniforms = torch.rand(64, generator=gen, dtype=torch.float64)
    uniforms[0], uniforms[1], uniforms[2] = 0.0, 1.0 - 2**-53, 0.5
    got = inverse_cdf(probs, uniforms)[:, 0].tolist()
    want = [min(reference_index(p, u), vocab - 1) for p, u in zip(probs.numpy(), uniforms.tolist())]
    assert got == want
    assert all(probs[r, i] > 0 for r, i in enumerate(got))  # never a token of probability 0


def test_the_largest_uniform_picks_the_last_token_with_mass():
    probs = torch.zeros(1, 2 * CDF_BLOCK)
    probs[0, [3, CDF_BLOCK + 7]] = torch.tensor([0.25, 0.75])
    assert inverse_cdf(probs, torch.tensor([1.0 - 2**-53]))[0, 0].item() == CDF_BLOCK + 7
    assert inverse_cdf(probs, torch.tensor([0.0]))[0, 0].item() == 3


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.6, 1.0), (1.3, 0.7)])
def test_draw_samples_the_tempered_nucleus_distribution(temperature, top_p):
    """Frequencies over 60,000 draws match softmax(top_p_filter(logits / T)) within 5 standard errors;
    a token outside the nucleus is never drawn."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    draws = 60_000
    rows = logits.expand(draws, -1)
    picked = draw(rows, temperature, top_p, torch.Generator().manual_seed(1))[:, 0]
    counts = torch.bincount(picked, minlength=len(logits)).double() / draws
    want = torch.softmax(sampling_logits(logits, temperature, top_p), -1).double()
    stderr = (want * (1 - want) / draws).sqrt()
    assert torch.all((counts - want).abs() <= 5 * stderr + 1e-12), (counts, want)
    assert torch.all(counts[want == 0] == 0)
    if top_p < 1.0:
        assert (want == 0).any()  # the case tests a real nucleus


def test_a_block_draws_the_same_whatever_else_is_in_the_batch():
    scores = torch.randn(3, 50)
    one = draw(scores[:2], 1.0, 1.0, torch.Generator().manual_seed(4))
    again = draw(scores[:2], 1.0, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(one, again)
    other = draw(scores[:2], 1.0, 1.0, torch.Generator().manual_seed(5))
    assert not torch.equal(one, other) or torch.equal(scores.argmax(-1)[:2, None], one)


def reference_nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """The definition, by a full sort: every token at least as likely as the first (in descending order) whose
    inclusive cumulative mass reaches top_p."""
    ordered = np.sort(probs)[::-1]
    mass = np.cumsum(ordered.astype(np.float64))
    first = min(int(np.sum(mass < top_p)), len(probs) - 1)
    return probs >= ordered[first]


@pytest.mark.parametrize("vocab", [5, 100, 49_152])
def test_the_nucleus_equals_its_definition_however_wide(vocab):
    """Rows whose nucleus is 1 token, a few, hundreds (past the first top-k) and nearly the whole vocabulary
    (a flat row, past every top-k level) all get the full sort's nucleus."""
    generator = torch.Generator().manual_seed(0)
    spreads = torch.tensor([30.0, 3.0, 1.0, 0.3, 0.0, 0.01])[:, None]
    logits = torch.randn(6, vocab, generator=generator) * spreads
    probs = torch.softmax(logits, -1)
    for top_p in (0.1, 0.5, 0.9, 0.999):
        kept = probs >= nucleus_threshold(probs, top_p)
        want = np.stack([reference_nucleus(row, top_p) for row in probs.numpy()])
        assert np.array_equal(kept.numpy(), want), top_p
    if vocab > 8 * NUCLEUS_FIRST_K:  # the case reaches beyond the first top-k
        assert int(kept[4].sum()) > 8 * NUCLEUS_FIRST_K


def test_the_nucleus_is_transformers_rule_without_ties_and_keeps_ties_whole():
    logits = torch.randn(8, 2_000, generator=torch.Generator().manual_seed(1)) * 2
    for top_p in (0.3, 0.8, 0.95):
        ours = torch.isfinite(sampling_logits(logits, 1.0, top_p))
        theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone()))
        assert torch.equal(ours, theirs), top_p
    tied = torch.tensor([[3.0, 1.0, 1.0, 1.0, -2.0]])  # the nucleus of mass 0.9 ends inside the tie
    assert torch.isfinite(sampling_logits(tied, 1.0, 0.9)).tolist() == [[True, True, True, True, False]]
