"""Bad input gets OpenAI's error format and a 4xx status (never 500), and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from serve_helpers import start

from dln.errors import DLNError
from serving.errors import as_openai_error, error_body

LIMIT = 64 * 1024
OK = {"model": "default", "prompt": "Hello", "max_tokens": 1, "temperature": 0}
CHAT_OK = {"model": "default", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def server(hf_model):
    with start(hf_model, max_body_bytes=LIMIT) as s:
        yield s


def check_error(response: httpx.Response, status: int, param: str | None = None, code=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code
    return error


COMPLETION_CASES = {
    "missing prompt": ({"model": "default"}, "prompt"),
    "missing model": ({"prompt": "Hi"}, "model"),
    "prompt of the wrong type": ({**OK, "prompt": 5}, "prompt"),
    "max_tokens of the wrong type": ({**OK, "max_tokens": "many"}, "max_tokens"),
    "negative max_tokens": ({**OK, "max_tokens": -1}, "max_tokens"),
    "n = 0": ({**OK, "n": 0}, "n"),
    "n too large": ({**OK, "n": 100000}, "n"),
    "negative temperature": ({**OK, "temperature": -0.5}, "temperature"),
    "top_p = 0": ({**OK, "top_p": 0}, "top_p"),
    "negative logprobs": ({**OK, "logprobs": -1}, "logprobs"),
    "too many logprobs": ({**OK, "logprobs": 1000}, "logprobs"),
    "stop of the wrong type": ({**OK, "stop": 5}, "stop"),
    "best_of below n": ({**OK, "n": 3, "best_of": 2, "temperature": 1}, "best_of"),
    "unknown reward": ({**OK, "reward": "no-such-reward"}, "reward"),
    "empty prompt list": ({**OK, "prompt": []}, "prompt"),
    "token id outside the vocabulary": ({**OK, "prompt": [1, 10**9]}, "prompt"),
    "prompt longer than the context": ({**OK, "prompt": "word " * 9000}, "prompt"),
    "prompt + max_tokens longer than the context": ({**OK, "max_tokens": 10**6}, "prompt"),
}

CHAT_CASES = {
    "missing messages": ({"model": "default"}, "messages"),
    "empty messages": ({**CHAT_OK, "messages": []}, "messages"),
    "unknown role": ({**CHAT_OK, "messages": [{"role": "robot", "content": "Hi"}]}, "messages"),
    "content of the wrong type": ({**CHAT_OK, "messages": [{"role": "user", "content": 5}]}, "messages"),
    "negative max_tokens": ({**CHAT_OK, "max_tokens": -3}, "max_tokens"),
    "temperature above 2": ({**CHAT_OK, "temperature": 7}, "temperature"),
    "top_logprobs without logprobs": ({**CHAT_OK, "top_logprobs": 2}, "top_logprobs"),
    "too many top_logprobs": ({**CHAT_OK, "logprobs": True, "top_logprobs": 1000}, "top_logprobs"),
    "messages longer than the context": (
        {**CHAT_OK, "messages": [{"role": "user", "content": "word " * 9000}]},
        "messages",
    ),
}


@pytest.mark.parametrize("case", list(COMPLETION_CASES))
def test_bad_completion_requests_are_400(server, case):
    body, param = COMPLETION_CASES[case]
    check_error(httpx.post(f"{server.base_url}/completions", json=body, timeout=60), 400, param)


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_bad_chat_requests_are_400(server, case):
    body, param = CHAT_CASES[case]
    check_error(httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=60), 400, param)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"a string"', b""])
def test_a_body_that_is_not_a_json_object_is_400(server, content):
    response = httpx.post(
        f"{server.base_url}/completions", content=content, headers={"Content-Type": "application/json"}
    )
    check_error(response, 400)


def test_the_openai_client_sees_a_bad_request_error(server):
    with pytest.raises(openai.BadRequestError) as caught:
        server.client.completions.create(model="default", prompt="Hi", n=0)
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "n"


def test_unknown_model_is_404(server):
    for path, body in (
        ("completions", {**OK, "model": "nope"}),
        ("chat/completions", {**CHAT_OK, "model": "nope"}),
    ):
        error = check_error(
            httpx.post(f"{server.base_url}/{path}", json=body), 404, "model", "model_not_found"
        )
        assert "default" in error["message"]  # says what is served
    check_error(httpx.get(f"{server.base_url}/models/nope"), 404)
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(model="nope", messages=CHAT_OK["messages"])


def test_unknown_route_and_wrong_method_use_the_error_format(server):
    check_error(httpx.get(f"{server.base_url}/no/such/route"), 404)
    check_error(httpx.get(f"{server.base_url}/completions"), 405)


def test_oversized_body_by_content_length_is_413(server):
    body = {**OK, "prompt": "a" * (LIMIT + 100)}
    check_error(httpx.post(f"{server.base_url}/completions", json=body), 413, code="request_too_large")


def test_oversized_chunked_body_is_413(server):
    def chunks():  # no Content-Length: the limit is checked while reading
        yield b'{"model": "default", "prompt": "'
        for _ in range(LIMIT // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    response = httpx.post(
        f"{server.base_url}/completions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    check_error(response, 413, code="request_too_large")


def test_a_body_just_under_the_limit_is_served(server):
    body = {**OK, "user": "a" * (LIMIT - 200)}  # an accepted, ignored field carries the bulk
    response = httpx.post(f"{server.base_url}/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text


def test_the_server_keeps_serving_after_bad_requests(server, hf_model):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    text = server.client.completions.create(model="default", prompt="Hello", max_tokens=4, temperature=0)
    assert text.choices[0].text == hf_model.generate(["Hello"], max_tokens=4)[0][0]
    reply = server.client.chat.completions.create(model="default", messages=CHAT_OK["messages"], max_tokens=2)
    assert reply.choices[0].message.content


def stream_events(response: httpx.Response) -> list:
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]


def test_an_error_during_a_stream_has_the_type_and_code_it_has_before_streaming(server, monkeypatch):
    async def failing_generate(job):
        raise DLNError("this model cannot answer that")

    monkeypatch.setattr(server.state.backend, "generate", failing_generate)
    body = {**OK, "max_tokens": 4}
    before = check_error(httpx.post(f"{server.base_url}/completions", json=body, timeout=60), 400)
    response = httpx.post(f"{server.base_url}/completions", json={**body, "stream": True}, timeout=60)
    assert response.status_code == 200  # the status line went out before the error
    during = stream_events(response)[-1]["error"]
    assert (during["type"], during["code"]) == (before["type"], before["code"])
    assert during["type"] == "invalid_request_error"
    assert during["message"] == before["message"] == "this model cannot answer that"
    assert response.text.endswith("data: [DONE]\n\n")


def test_one_mapping_for_every_failure():
    assert as_openai_error(DLNError("bad")).status_code == 400
    internal = as_openai_error(ValueError("secret detail"))
    assert (internal.status_code, internal.type) == (500, "server_error")
    assert "secret detail" not in internal.message and "ValueError" in internal.message
    assert error_body(internal)["error"]["type"] == "server_error"
