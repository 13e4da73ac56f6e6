"""API keys: Bearer auth on every route but /health, OpenAI's 401, the key never echoed."""

from __future__ import annotations

import httpx
import openai
import pytest
from serve_helpers import start

KEY = "test-key-4f1c9a"


@pytest.fixture(scope="module")
def server(hf_model):
    with start(hf_model, api_key=KEY) as s:
        yield s


def test_the_right_key_is_served(server):
    assert [m.id for m in server.client.models.list()] == ["default"]
    response = server.client.completions.create(model="default", prompt="Hi", max_tokens=2, temperature=0)
    assert response.usage.completion_tokens > 0


@pytest.mark.parametrize("api_key", ["wrong-key", KEY + "x", KEY[:-1]])
def test_a_wrong_key_is_401(server, api_key):
    client = openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    assert KEY not in caught.value.response.text


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer"}]
)
def test_a_missing_or_malformed_header_is_401(server, headers):
    for method, path in (
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
    ):
        response = httpx.request(method, server.url + path, headers=headers, json={"model": "default"})
        assert response.status_code == 401
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "invalid_api_key"
        assert response.headers["www-authenticate"] == "Bearer"


def test_the_key_is_checked_before_the_body_is_read(server):
    response = httpx.post(f"{server.base_url}/completions", content=b"x" * (2 << 20))
    assert response.status_code == 401


def test_health_needs_no_key(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
