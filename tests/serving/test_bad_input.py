"""A hand-made matrix of bad requests against a server with an API key: each gets a 4xx with OpenAI's error
object naming the parameter (never a 500, never a reset connection), and the server answers after each."""

from __future__ import annotations

import json

import httpx
import pytest
from serve_helpers import start

KEY = "matrix-key-7d2e"
AUTH = {"Authorization": f"Bearer {KEY}"}
OK = {"model": "default", "prompt": "Hello", "max_tokens": 1, "temperature": 0}
CHAT = {
    "model": "default",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 1,
    "temperature": 0,
}
CMPL, CHATP = "/v1/completions", "/v1/chat/completions"


def user(content) -> dict:
    return {**CHAT, "messages": [{"role": "user", "content": content}]}


# name: (method, path, json body or raw bytes, headers, status, param)
CASES = {
    "prompt of the wrong type": ("POST", CMPL, {**OK, "prompt": 5}, AUTH, 400, "prompt"),
    "lone surrogate in the prompt": ("POST", CMPL, {**OK, "prompt": "a \udfff b"}, AUTH, 400, "prompt"),
    "lone surrogate in a prompt list": (
        "POST",
        CMPL,
        {**OK, "prompt": ["ok", "\ud800"]},
        AUTH,
        400,
        "prompt",
    ),
    "lone surrogate in a stop string": ("POST", CMPL, {**OK, "stop": ["\udc00"]}, AUTH, 400, "stop"),
    "lone surrogate in chat content": ("POST", CHATP, user("a \udfff b"), AUTH, 400, "messages"),
    "lone surrogate in a content part": (
        "POST",
        CHATP,
        user([{"type": "text", "text": "\udfff"}]),
        AUTH,
        400,
        "messages",
    ),
    "seed 2**70": ("POST", CMPL, {**OK, "seed": 2**70}, AUTH, 400, "seed"),
    "seed -2**70": ("POST", CMPL, {**OK, "seed": -(2**70)}, AUTH, 400, "seed"),
    "chat seed 2**64": ("POST", CHATP, {**CHAT, "seed": 2**64}, AUTH, 400, "seed"),
    "chat seed -2**63 - 1": ("POST", CHATP, {**CHAT, "seed": -(2**63) - 1}, AUTH, 400, "seed"),
    "huge max_tokens": ("POST", CMPL, {**OK, "max_tokens": 10**30}, AUTH, 400, "prompt"),
    "negative max_tokens": ("POST", CMPL, {**OK, "max_tokens": -5}, AUTH, 400, "max_tokens"),
    "negative n": ("POST", CMPL, {**OK, "n": -1}, AUTH, 400, "n"),
    "huge n": ("POST", CHATP, {**CHAT, "n": 10**9}, AUTH, 400, "n"),
    "temperature as a word": ("POST", CMPL, {**OK, "temperature": "hot"}, AUTH, 400, "temperature"),
    "temperature as a numeric string": ("POST", CMPL, {**OK, "temperature": "0.5"}, AUTH, 400, "temperature"),
    "top_p above 1": ("POST", CMPL, {**OK, "top_p": 5}, AUTH, 400, "top_p"),
    "huge logprobs": ("POST", CMPL, {**OK, "logprobs": 10**6}, AUTH, 400, "logprobs"),
    "echo as a string": ("POST", CMPL, {**OK, "echo": "true"}, AUTH, 400, "echo"),
    "stream as a string": ("POST", CMPL, {**OK, "stream": "yes"}, AUTH, 400, "stream"),
    "stream with n too large": ("POST", CMPL, {**OK, "stream": True, "n": 1000}, AUTH, 400, "n"),
    "stream with n > 1 and best_of < n": (
        "POST",
        CHATP,
        {**CHAT, "stream": True, "n": 2, "best_of": 1, "temperature": 1},
        AUTH,
        400,
        "best_of",
    ),
    "negative token id": ("POST", CMPL, {**OK, "prompt": [1, -4]}, AUTH, 400, "prompt"),
    "token id 2**70": ("POST", CMPL, {**OK, "prompt": [1, 2**70]}, AUTH, 400, "prompt"),
    "too many stop strings": ("POST", CMPL, {**OK, "stop": [f"s{i}" for i in range(100)]}, AUTH, 400, "stop"),
    "a stop string too long": ("POST", CMPL, {**OK, "stop": "x" * 1000}, AUTH, 400, "stop"),
    "unknown role": (
        "POST",
        CHATP,
        {**CHAT, "messages": [{"role": "robot", "content": "Hi"}]},
        AUTH,
        400,
        "messages",
    ),
    "message without content": (
        "POST",
        CHATP,
        {**CHAT, "messages": [{"role": "user"}]},
        AUTH,
        400,
        "messages",
    ),
    "message with null content": ("POST", CHATP, user(None), AUTH, 400, "messages"),
    "messages not a list": ("POST", CHATP, {**CHAT, "messages": "Hi"}, AUTH, 400, "messages"),
    "empty choice list": (
        "POST",
        CMPL,
        {**OK, "structured_outputs": {"choice": []}},
        AUTH,
        400,
        "structured_outputs",
    ),
    "an empty choice": (
        "POST",
        CHATP,
        {**CHAT, "structured_outputs": {"choice": ["a", ""]}},
        AUTH,
        400,
        "structured_outputs",
    ),
    "structured outputs other than choice": (
        "POST",
        CMPL,
        {**OK, "structured_outputs": {"choice": ["a"], "json": {}}},
        AUTH,
        400,
        "structured_outputs",
    ),
    "raw NUL bytes in the body": ("POST", CMPL, b'{"model": "default", "prompt": "a\x00b"}', AUTH, 400, None),
    "invalid UTF-8 in the body": (
        "POST",
        CMPL,
        b'{"model": "default", "prompt": "\xff\xfe"}',
        AUTH,
        400,
        None,
    ),
    "a 10 MB body": ("POST", CMPL, {**OK, "prompt": "a" * 10_000_000}, AUTH, 413, None),
    "no key": ("POST", CMPL, OK, {}, 401, None),
    "a wrong key": ("POST", CHATP, CHAT, {"Authorization": "Bearer nope"}, 401, None),
    "unknown model": ("POST", CMPL, {**OK, "model": "gpt-9"}, AUTH, 404, "model"),
    "GET on completions": ("GET", CMPL, None, AUTH, 405, None),
    "DELETE on models": ("DELETE", "/v1/models", None, AUTH, 405, None),
}


@pytest.fixture(scope="module")
def server(hf_model):
    with start(hf_model, api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_4xx_with_an_openai_error(client, case):
    method, path, body, headers, status, param = CASES[case]
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()  # ASCII, with \\u escapes: a lone surrogate reaches the server
    json_header = {"Content-Type": "application/json"} if body is not None else {}
    response = client.request(method, path, content=body, headers={**headers, **json_header})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if status == 405:
        assert response.headers["allow"] in ("POST", "GET")
    if status != 413:  # a 413 closes the connection: the rest of the body is not read
        assert response.headers.get("connection") != "close"
    assert client.get("/health").json()["status"] == "ok"


def test_the_matrix_has_at_least_30_cases():
    assert len(CASES) >= 30 and all(400 <= c[4] < 500 for c in CASES.values())


@pytest.mark.parametrize(
    "path, body",
    [
        (CMPL, {**OK, "seed": 2**63 - 1}),
        (CMPL, {**OK, "seed": -(2**63)}),
        (CMPL, {**OK, "prompt": "a\u0000b"}),  # an escaped NUL is text like any other
        (CMPL, {**OK, "stop": [f"s{i}" for i in range(8)]}),
        (CHATP, {**CHAT, "stream": True, "n": 2}),
    ],
)
def test_the_edges_of_the_limits_are_served(client, path, body):
    response = client.post(path, json=body, headers=AUTH)
    assert response.status_code == 200, response.text


def test_the_server_still_generates_after_the_matrix(client, hf_model):
    response = client.post(CMPL, json={**OK, "max_tokens": 4}, headers=AUTH).json()
    assert response["choices"][0]["text"] == hf_model.generate(["Hello"], max_tokens=4)[0][0]
