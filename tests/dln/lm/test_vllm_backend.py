"""The vLLM backend against itself and against `hf:` (same tokens, same scores).

Runs where vllm is importable (the CPU build lives in its own venv, `make vllm-venv`):
    .venv-vllm/bin/python -m pytest -m vllm tests/dln/lm/test_vllm_backend.py -q
One engine serves the whole module: starting it takes ~35 s on a 2-core CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")

import dln  # noqa: E402
from dln.errors import DLNError  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

# Both backends run fp32 on the same token ids, so the only difference is kernel arithmetic (vLLM's CPU
# attention and fused ops vs. torch's): measured on a 2-core CPU at max |delta| = 3e-5 nats over 70 tokens
# (mean 8e-6). 1e-3 leaves a wide margin, and any tokenisation or off-by-one error moves scores by nats.
SCORE_TOLERANCE = 1e-3

STORY = [f"Once upon a time, the number {i} lived in a small town where" for i in range(4)]
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def lm():
    model = dln.load_model("vllm:default", cache=False, dtype="float32")  # fp32 on GPU too, to match hf
    yield model
    model.close()


@pytest.fixture(scope="module")
def hf():
    return dln.load_model("hf:default", cache=False, dtype="float32")


def test_uri_names_backend_and_path(lm):
    assert lm.uri.startswith("vllm:") and lm.uri.endswith("SmolLM2-135M-Instruct")


def test_greedy_is_deterministic_and_non_empty(lm):
    first = lm.generate(STORY, max_tokens=16)
    assert first == lm.generate(STORY, max_tokens=16)
    assert len(first) == len(STORY) and all(len(row) == 1 and row[0].strip() for row in first)


def test_greedy_matches_hf(lm, hf):
    """Same prompt ids and fp32 logits agreeing to ~1e-5: the greedy paths coincide token for token."""
    prompts = [STORY[0], CHAT]
    assert lm.generate(prompts, max_tokens=12) == hf.generate(prompts, max_tokens=12)


def test_chat_prompt(lm):
    (replies,) = lm.generate([CHAT], n=2, max_tokens=16)
    assert replies[0].strip() and replies[0] == replies[1]  # greedy: n copies of one answer
    assert not replies[0].startswith("assistant")  # the template's generation prompt is not repeated


def test_seeded_sampling_is_reproducible(lm):
    prompts = [STORY[0], CHAT]
    a = lm.generate(prompts, n=2, temperature=1.0, max_tokens=16, seed=1)
    assert a == lm.generate(prompts, n=2, temperature=1.0, max_tokens=16, seed=1)
    assert lm.generate([CHAT], n=2, temperature=1.0, max_tokens=16, seed=1) == [a[1]]  # batch-independent
    b = lm.generate(prompts, n=2, temperature=1.0, max_tokens=16, seed=2)
    assert a != b
    assert a[0][0] != a[0][1]  # the n samples of one request differ
    assert a[0][1] != b[0][0]  # vLLM alone would give sample 1 of seed 1 the seed of sample 0 of seed 2


def test_stop_strings_are_excluded(lm):
    (text,) = lm.generate([STORY[1]], max_tokens=24)[0]
    stop = text.split()[2]
    (stopped,) = lm.generate([STORY[1]], max_tokens=24, stop=[stop, "never-generated"])[0]
    assert stopped == text[: text.find(stop)]


def test_score_agrees_with_hf(lm, hf):
    contexts = ["The capital of France is", "", CHAT, "Review: a wonderful, moving film.\nSentiment:"]
    continuations = [" Paris", " positive", " negative, and a longer tail of tokens to score", "Red", ""]
    ctx = [c for c in contexts for _ in continuations]
    cont = continuations * len(contexts)
    ours, theirs = lm.score(ctx, cont), hf.score(ctx, cont)
    assert [len(row) for row in ours] == [len(row) for row in theirs]
    assert all(row == [] for row, c in zip(ours, cont, strict=True) if c == "")
    delta = max(abs(a - b) for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
    assert delta < SCORE_TOLERANCE
    assert all(lp <= 0 for row in ours for lp in row)


def test_classify_rows_sum_to_one(lm):
    prompts = ["Review: a wonderful, moving film.\nSentiment:", [{"role": "user", "content": "Good or bad?"}]]
    log_p = lm.classify(prompts, [" positive", " negative", " neutral"])
    assert log_p.shape == (2, 3)
    np.testing.assert_allclose(np.exp(log_p).sum(axis=1), 1.0, atol=1e-9)


def test_max_tokens_zero_skips_the_engine(lm, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the engine was called")

    monkeypatch.setattr(lm._llm, "generate", fail)
    assert lm.generate(STORY[:2], n=3, max_tokens=0) == [["", "", ""], ["", "", ""]]


def test_prompt_longer_than_max_model_len_is_a_clear_error(lm):
    with pytest.raises(DLNError, match="max_model_len"):
        lm.score(["word " * lm.max_model_len], [" end"])
