"""The server over vLLM's async engine (`vllm:` models), against the HF engine's numbers.

Runs where vllm is importable (the CPU build lives in its own venv, `make vllm-venv`):
    .venv-vllm/bin/python -m pytest -m vllm tests/serving/backends/test_vllm.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm")

from serve_helpers import running_server  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(300)]

SCORE_TOLERANCE = 1e-3  # vLLM's CPU kernels vs torch's, see tests/dln/lm/test_vllm_backend.py


@pytest.fixture(scope="module")
def client():
    import openai

    from serving import create_app
    from serving.backends.vllm import VLLMBackend

    app = create_app(VLLMBackend("default"), served_name="default")
    with running_server(app) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="EMPTY", max_retries=0, timeout=120)


def test_echo_scoring_matches_hf(client, hf_model):
    text = "The capital of France is Paris"
    lp = client.completions.create(model="default", prompt=text, echo=True, max_tokens=0, logprobs=2)
    lp = lp.choices[0].logprobs
    assert "".join(lp.tokens) == text and lp.token_logprobs[0] is None
    assert all(len(top) == 2 for top in lp.top_logprobs[1:])
    want = hf_model.score(["The capital of France is"], [" Paris"])[0][0]
    np.testing.assert_allclose(lp.token_logprobs[-1], want, atol=SCORE_TOLERANCE)


def test_greedy_completion_and_chat_stream_match_hf(client, hf_model):
    text = client.completions.create(model="default", prompt="Water boils at", max_tokens=8, temperature=0)
    assert text.choices[0].text == hf_model.generate(["Water boils at"], max_tokens=8)[0][0]
    messages = [{"role": "user", "content": "Name one colour."}]
    chunks = client.chat.completions.create(
        model="default", messages=messages, max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == hf_model.generate([messages], max_tokens=8)[0][0]


def test_best_of_n_with_a_reward(client):
    response = client.completions.create(
        model="default",
        prompt="Say hi:",
        n=3,
        max_tokens=6,
        temperature=1.0,
        seed=1,
        extra_body={"reward": "length"},
    )
    (choice,) = response.choices
    assert len(choice.model_extra["rewards"]) == 3 and choice.model_extra["reward"] == len(choice.text)
