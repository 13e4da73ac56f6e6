"""/v1/chat/completions through the official `openai` client: chat template, streaming, log-probs, n, seed."""

from __future__ import annotations

import pytest

MESSAGES = [{"role": "user", "content": "Name one colour."}]


def chat(server, **fields):
    return server.client.chat.completions.create(
        model="default", messages=fields.pop("messages", MESSAGES), **fields
    )


def test_greedy_chat_equals_the_hf_backend(server, hf_model):
    response = chat(server, max_tokens=10, temperature=0)
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == hf_model.generate([MESSAGES], max_tokens=10)[0][0]
    assert response.object == "chat.completion"
    assert response.usage.prompt_tokens == len(hf_model.encode_prompt(MESSAGES))
    assert 0 < response.usage.completion_tokens <= 10


def test_content_parts_and_system_messages(server, hf_model):
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Name one "}, {"type": "text", "text": "fruit."}],
        },
    ]
    got = chat(server, messages=messages, max_tokens=6, temperature=0).choices[0].message.content
    plain = [messages[0], {"role": "user", "content": "Name one fruit."}]
    assert got == hf_model.generate([plain], max_tokens=6)[0][0]


def test_stream_adds_up_to_the_reply(server):
    want = chat(server, max_tokens=12, temperature=0).choices[0].message.content
    chunks = list(chat(server, max_tokens=12, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len(chunks) > 4
    assert len({c.id for c in chunks}) == 1


def test_logprobs_and_top_logprobs(server):
    choice = chat(server, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3).choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token  # greedy picks the most likely token
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob, abs=1e-5)
        assert bytes(item.bytes).decode() == item.token


def test_streamed_logprobs(server):
    chunks = list(chat(server, max_tokens=5, temperature=0, logprobs=True, stream=True))
    content = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert "".join(t.token for t in content) == "".join(c.choices[0].delta.content or "" for c in chunks)
    assert all(t.top_logprobs == [] for t in content)


def test_n_with_seed_is_reproducible(server):
    fields = dict(max_tokens=8, temperature=1.0, n=3, seed=11)
    first = [c.message.content for c in chat(server, **fields).choices]
    assert first == [c.message.content for c in chat(server, **fields).choices]
    assert [c.index for c in chat(server, **fields).choices] == [0, 1, 2]
    assert len(set(first)) > 1


def test_max_completion_tokens_and_stop(server):
    response = chat(server, max_completion_tokens=3, temperature=0)
    assert response.usage.completion_tokens <= 3 and response.choices[0].finish_reason == "length"
    full = chat(server, max_tokens=12, temperature=0).choices[0].message.content
    word = full.split()[1]
    stopped = chat(server, max_tokens=12, temperature=0, stop=[word]).choices[0]
    assert stopped.message.content == full[: full.index(word)] and stopped.finish_reason == "stop"
