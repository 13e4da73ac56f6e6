"""/v1/completions through the official `openai` client: text, echo scoring, log-probs, n, seed, streams."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = "The capital of France is"
CONTEXTS = [
    "The capital of France is",
    "Q: What is 2 + 2?\nA:",
    "Once upon a time, a small cat sat on a mat and",
    "x",
]
CONTINUATIONS = [" Paris", " 4, of course.", " fell asleep in the warm sun", " y z"]


def complete(server, **fields):
    return server.client.completions.create(model="default", **fields)


def test_greedy_completion_equals_the_hf_backend(server, hf_model):
    response = complete(server, prompt=PROMPT, max_tokens=8, temperature=0)
    (choice,) = response.choices
    assert choice.text == hf_model.generate([PROMPT], max_tokens=8)[0][0]
    assert response.object == "text_completion" and response.model == "default"
    assert response.usage.prompt_tokens == len(hf_model.encode_prompt(PROMPT))
    assert 0 < response.usage.completion_tokens <= 8
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_a_list_of_prompts_gives_n_choices_per_prompt_in_order(server, hf_model):
    prompts = [PROMPT, "Water boils at"]
    response = complete(server, prompt=prompts, max_tokens=5, temperature=0, n=2)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    want = [out[0] for out in hf_model.generate(prompts, max_tokens=5)]
    assert [c.text for c in response.choices] == [want[0], want[0], want[1], want[1]]
    assert response.usage.prompt_tokens == sum(len(hf_model.encode_prompt(p)) for p in prompts)


def test_echo_scoring_returns_every_prompt_token(server, hf_model):
    text = PROMPT + " Paris"
    response = complete(server, prompt=text, echo=True, max_tokens=0, logprobs=0)
    (choice,) = response.choices
    lp = choice.logprobs
    assert choice.text == text
    assert "".join(lp.tokens) == text
    assert (
        len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == len(hf_model.encode_prompt(text))
    )
    assert lp.token_logprobs[0] is None and all(v < 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert lp.top_logprobs[0] is None and all(t == {} for t in lp.top_logprobs[1:])  # k = 0: no alternatives
    assert response.usage.completion_tokens == 0
    # the last token is " Paris": its log-prob is hf:'s score of the continuation
    np.testing.assert_allclose(lp.token_logprobs[-1], hf_model.score([PROMPT], [" Paris"])[0][0], atol=1e-4)


def test_echo_scoring_with_top_k(server):
    lp = complete(server, prompt=PROMPT + " Paris", echo=True, max_tokens=0, logprobs=3).choices[0].logprobs
    for token_logprob, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        assert len(top) == 3
        assert max(top.values()) >= token_logprob - 1e-5
        assert sorted(top.values(), reverse=True) == list(top.values())
    assert lp.top_logprobs[-1][" Paris"] == pytest.approx(lp.token_logprobs[-1], abs=1e-5)


def test_the_openai_backend_against_this_server_scores_like_hf(server, hf_model):
    from dln.lm import load_model

    remote = load_model(f"openai:default@{server.base_url}", cache=False)
    try:
        got = remote.score(CONTEXTS, CONTINUATIONS)
        want = hf_model.score(CONTEXTS, CONTINUATIONS)
        for g, w in zip(got, want, strict=True):
            assert len(g) == len(w)
            np.testing.assert_allclose(g, w, atol=1e-4)
        labels = [" yes", " no"]
        np.testing.assert_allclose(
            remote.classify(["Is the sky blue? Answer:"], labels),
            hf_model.classify(["Is the sky blue? Answer:"], labels),
            atol=1e-4,
        )
    finally:
        remote.close()


def test_generation_logprobs_describe_the_generated_tokens(server):
    choice = complete(server, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2).choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2
        assert (
            top[token] == pytest.approx(value, abs=1e-5) == pytest.approx(max(top.values()), abs=1e-5)
        )  # greedy


def test_echo_with_generation_covers_prompt_and_completion(server):
    choice = complete(server, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1).choices[0]
    assert choice.text.startswith(PROMPT) and len(choice.text) > len(PROMPT)
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and None not in lp.token_logprobs[1:]
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]


def test_seeded_samples_are_reproducible(server):
    fields = dict(prompt="My favourite animal is", max_tokens=8, temperature=1.0, n=3)
    first = [c.text for c in complete(server, seed=7, **fields).choices]
    again = [c.text for c in complete(server, seed=7, **fields).choices]
    other = [c.text for c in complete(server, seed=8, **fields).choices]
    assert first == again and len(first) == 3
    assert other != first
    assert len(set(first)) > 1  # n samples, not one sample n times


def test_stop_strings_end_the_completion(server):
    choice = complete(server, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"]).choices[0]
    assert " 7" not in choice.text and choice.text.startswith(" 5, 6,")
    assert choice.finish_reason == "stop"
    scored = complete(server, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"], logprobs=0)
    assert "".join(scored.choices[0].logprobs.tokens) == choice.text  # the stop string is not in them


def test_stream_adds_up_to_the_completion(server):
    fields = dict(prompt="Once upon a time", max_tokens=12, temperature=0, n=2)
    want = [c.text for c in complete(server, **fields).choices]
    chunks = list(complete(server, stream=True, stream_options={"include_usage": True}, **fields))
    texts = ["", ""]
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == want
    assert set(finishes) == {0, 1}
    assert len(chunks) > 4  # token by token, not one piece
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_stream_with_logprobs_and_stop(server):
    fields = dict(prompt="1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 7"])
    want = complete(server, **fields).choices[0].text
    for extra in ({}, {"logprobs": 1}):
        chunks = list(complete(server, stream=True, **fields, **extra))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want
        assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].usage is not None


def test_token_id_prompts(server, hf_model):
    ids = hf_model.encode_prompt(PROMPT)
    by_ids = complete(server, prompt=ids, max_tokens=5, temperature=0).choices[0].text
    assert by_ids == complete(server, prompt=PROMPT, max_tokens=5, temperature=0).choices[0].text
