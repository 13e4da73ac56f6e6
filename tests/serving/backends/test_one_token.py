"""Greedy one-token requests are answered by one forward (no second prefill) with what generate + the
log-prob pass give: the same token, finish reason and log-probs (to 1e-4), echo or not, end token or not."""

from __future__ import annotations

import numpy as np
import pytest

from serving.backends import one_token
from serving.backends.hf_engine import HFEngine
from serving.backends.jobs import GenerateJob, SamplingParams

TEXTS = ["The capital of France is", "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!", "x"]
ONE = SamplingParams(temperature=0.0, max_tokens=1, n=2)


@pytest.fixture(scope="module")
def engine(hf_model):
    return HFEngine(hf_model)


def jobs(hf_model):
    prompts = [hf_model.encode_prompt(t) for t in TEXTS]
    return [
        GenerateJob(prompts[:2], ONE, logprobs=3, echo=True),
        GenerateJob(prompts[2:], ONE, logprobs=100),
        GenerateJob(prompts[:1], ONE),
    ]


def test_one_forward_answers_as_generate_and_the_logprob_pass(engine, hf_model, monkeypatch):
    decoder = engine.model.get_decoder()
    calls = []
    handle = decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        fast = engine.generate(jobs(hf_model))
    finally:
        handle.remove()
    assert len(calls) == 1  # all rows in one forward: no generate, no second prefill
    monkeypatch.setattr(one_token, "applies", lambda *_: False)
    slow = engine.generate(jobs(hf_model))
    for f, s in zip(
        (x for j in fast for p in j for x in p), (x for j in slow for p in j for x in p), strict=True
    ):
        assert (f.text, f.token_ids, f.finish_reason) == (s.text, s.token_ids, s.finish_reason)
        if s.logprobs is None:
            assert f.logprobs is None
            continue
        assert f.logprobs.token_ids == s.logprobs.token_ids
        np.testing.assert_allclose(
            [v for v in f.logprobs.logprobs if v is not None],
            [v for v in s.logprobs.logprobs if v is not None],
            atol=1e-4,
        )
        assert [[t for t, _ in top] for top in f.logprobs.top] == [
            [t for t, _ in top] for top in s.logprobs.top
        ]


def test_sampling_stop_strings_and_longer_requests_take_the_general_path():
    assert one_token.applies(ONE, [GenerateJob([[1]], ONE)])
    for params in (
        SamplingParams(temperature=1.0, max_tokens=1),
        SamplingParams(temperature=0.0, max_tokens=2),
        SamplingParams(temperature=0.0, max_tokens=1, stop=("\n",)),
    ):
        assert not one_token.applies(params, [GenerateJob([[1]], params)])
    assert not one_token.applies(ONE, [GenerateJob([[1]], ONE, on_text=lambda i, t: None)])
