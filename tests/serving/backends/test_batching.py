"""Concurrent requests share model calls (the micro-batcher's counters) and get the same answers as alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serve_helpers import start

PROMPTS = [
    "The capital of France is",
    "Water boils at",
    "The largest planet is",
    "My favourite food is",
    "In 1492, Columbus",
    "The opposite of hot is",
    "Two plus two equals",
    "The sky is",
]


def concurrently(function, items):
    """Call `function` on every item from its own thread, all released at once."""
    barrier = threading.Barrier(len(items))

    def call(item):
        barrier.wait()
        return function(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(call, items))


def greedy(server, prompt: str) -> str:
    response = server.client.completions.create(model="default", prompt=prompt, max_tokens=6, temperature=0)
    return response.choices[0].text


def echo_logprobs(server, prompt: str) -> list:
    response = server.client.completions.create(
        model="default", prompt=prompt, max_tokens=0, echo=True, logprobs=0
    )
    return response.choices[0].logprobs.token_logprobs[1:]


def test_concurrent_generations_are_batched_and_answer_as_alone(server):
    alone = [greedy(server, p) for p in PROMPTS]  # sequential: one request per batch
    before = server.state.backend.stats()
    together = concurrently(lambda p: greedy(server, p), PROMPTS)
    after = server.state.backend.stats()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == len(PROMPTS)
    assert batches < requests, after
    assert after["largest_batch"] > 1
    assert together == alone


def test_concurrent_scoring_is_batched(server):
    alone = [echo_logprobs(server, p) for p in PROMPTS]
    before = server.state.backend.stats()
    together = concurrently(lambda p: echo_logprobs(server, p), PROMPTS)
    after = server.state.backend.stats()
    assert after["batches"] - before["batches"] < after["requests"] - before["requests"] == len(PROMPTS)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_streams_and_plain_requests_share_a_batch(server):
    def stream(prompt: str) -> str:
        chunks = server.client.completions.create(
            model="default", prompt=prompt, max_tokens=6, temperature=0, stream=True
        )
        return "".join(c.choices[0].text for c in chunks if c.choices)

    def ask(item: tuple[int, str]) -> str:
        index, prompt = item
        return stream(prompt) if index % 2 else greedy(server, prompt)

    alone = [greedy(server, p) for p in PROMPTS[:4]]
    assert concurrently(ask, list(enumerate(PROMPTS[:4]))) == alone


@pytest.fixture(scope="module")
def unbatched(hf_model):
    with start(hf_model, backend_options={"max_batch_size": 1}) as s:
        yield s


def test_max_batch_size_one_serves_one_request_per_call(unbatched):
    answers = concurrently(lambda p: greedy(unbatched, p), PROMPTS[:4])
    stats = unbatched.state.backend.stats()
    assert stats["batches"] == stats["requests"] == 4 and stats["largest_batch"] == 1
    assert all(answers)


def seeded_top_p(server, prompt: str) -> list[str]:
    response = server.client.completions.create(
        model="default", prompt=prompt, max_tokens=6, temperature=0.9, top_p=0.8, seed=11, n=2
    )
    return [c.text for c in response.choices]


def test_seeded_top_p_samples_are_the_same_alone_and_batched(server):
    alone = [seeded_top_p(server, p) for p in PROMPTS[:4]]
    before = server.state.backend.stats()
    together = concurrently(lambda p: seeded_top_p(server, p), PROMPTS[:4])
    after = server.state.backend.stats()
    assert after["batches"] - before["batches"] < after["requests"] - before["requests"] == 4
    assert together == alone
    assert any(len(set(samples)) > 1 for samples in alone)  # sampled, not greedy
