"""vLLM's extras: `/tokenize`, `/detokenize`, `/metrics` (Prometheus) and choice decoding
(`structured_outputs: {"choice": [...]}`), each checked against the `hf:` backend on the default model."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

PROMPT = "The capital of France is"
CHOICES = [" Paris", " Berlin", " a big city", " London"]
MESSAGES = [{"role": "user", "content": "Is the sky blue? Answer yes or no."}]


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_tokenize_a_prompt_and_messages_as_the_hf_backend_does(server, hf_model):
    got = post(server, "/tokenize", {"model": "default", "prompt": PROMPT, "return_token_strs": True}).json()
    ids = hf_model.encode_prompt(PROMPT)
    assert got["tokens"] == ids and got["count"] == len(ids)
    assert got["max_model_len"] == server.state.backend.max_model_len
    assert got["token_strs"] == hf_model.tokenizer.convert_ids_to_tokens(ids)
    chat = post(server, "/tokenize", {"messages": MESSAGES}).json()
    assert chat["tokens"] == hf_model.encode_prompt(MESSAGES) and chat["token_strs"] is None
    without = post(server, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert len(without["tokens"]) < len(chat["tokens"])


def test_detokenize_inverts_tokenize(server, hf_model):
    ids = post(server, "/tokenize", {"prompt": PROMPT}).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": ids}).json() == {"prompt": hf_model.tokenizer.decode(ids)}


def test_tokenize_errors(server):
    assert post(server, "/tokenize", {"model": "nope", "prompt": "x"}).status_code == 404
    error = post(server, "/detokenize", {"tokens": [1, 10**8]}).json()["error"]
    assert error["param"] == "tokens"
    error = post(server, "/tokenize", {"messages": [{"role": "user"}]}).json()["error"]
    assert error["param"] == "messages"


def metric_values(server) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(f"{server.url}/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_count_requests_tokens_batches_and_latency(server):
    before = metric_values(server)
    body = {"model": "default", "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    usage = post(server, "/v1/completions", body).json()["usage"]
    post(server, "/v1/completions", {**body, "n": 0})  # a 400
    after = metric_values(server)

    def grew(name, labels=()):
        key = (name, tuple(sorted(labels)))
        return after.get(key, 0) - before.get(key, 0)

    ok = (("route", "/v1/completions"), ("status", "200"))
    assert grew("dln_requests_total", ok) == 1
    assert grew("dln_requests_total", (("route", "/v1/completions"), ("status", "400"))) == 1
    assert grew("dln_prompt_tokens_total") == usage["prompt_tokens"]
    assert grew("dln_generation_tokens_total") == usage["completion_tokens"]
    assert grew("dln_batch_size_count") >= 1
    assert grew("dln_request_duration_seconds_count", (("route", "/v1/completions"),)) == 2
    assert ("dln_queue_depth", ()) in after
    httpx.get(f"{server.url}/no/such/path")
    assert metric_values(server)[("dln_requests_total", (("route", "other"), ("status", "404")))] >= 1


def choose(server, path="/v1/completions", **fields):
    body = {"model": "default", "structured_outputs": {"choice": CHOICES}, "temperature": 0, **fields}
    if path == "/v1/completions":
        body.setdefault("prompt", PROMPT)
    else:
        body.setdefault("messages", MESSAGES)
    response = post(server, path, body)
    assert response.status_code == 200, response.text
    return response.json()


def test_choice_decoding_answers_the_most_probable_choice_exactly(server, hf_model):
    response = choose(server, max_tokens=1)  # max_tokens does not cut a choice
    (choice,) = response["choices"]
    want = [sum(s) for s in hf_model.score([PROMPT] * len(CHOICES), CHOICES)]
    got = [choice["choice_logprobs"][c] for c in CHOICES]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert choice["text"] == CHOICES[int(np.argmax(want))] and choice["finish_reason"] == "stop"
    assert response["usage"]["completion_tokens"] == len(hf_model.encode_continuation(choice["text"]))


def test_choice_decoding_in_chat_with_logprobs(server, hf_model):
    choices = ["Yes", "No"]
    response = choose(server, "/v1/chat/completions", structured_outputs={"choice": choices}, logprobs=True)
    (choice,) = response["choices"]
    want = [sum(s) for s in hf_model.score([MESSAGES] * 2, choices)]
    np.testing.assert_allclose([choice["choice_logprobs"][c] for c in choices], want, atol=1e-4)
    assert choice["message"]["content"] == choices[int(np.argmax(want))]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    np.testing.assert_allclose(sum(t["logprob"] for t in content), max(want), atol=1e-4)


def test_sampled_choices_are_seeded_and_stay_in_the_set(server):
    first = [c["text"] for c in choose(server, temperature=2.0, n=6, seed=3)["choices"]]
    again = [c["text"] for c in choose(server, temperature=2.0, n=6, seed=3)["choices"]]
    assert first == again and set(first) <= set(CHOICES) and len(first) == 6


@pytest.mark.parametrize("fields", [{"best_of": 2, "n": 1}, {"reward": "length"}])
def test_choice_decoding_refuses_ranking(server, fields):
    body = {"model": "default", "prompt": PROMPT, "structured_outputs": {"choice": CHOICES}, **fields}
    assert post(server, "/v1/completions", body).json()["error"]["param"] == "structured_outputs"
