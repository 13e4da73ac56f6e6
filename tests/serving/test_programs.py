"""Serving a DLN program as a model name, with a stand-in program over the real model."""

from __future__ import annotations

import importlib.util

import httpx
import numpy as np
import pytest

from dln.errors import DLNError
from serving.models import load_program_spec


class TemplateClassifier:
    """The `dln.load_program` contract: a prompt template around the input, answered by classify."""

    def __init__(self, lm, template: str, labels: list[str]) -> None:
        self.lm, self.template, self.labels = lm, template, labels
        self.model_uri = lm.uri
        self.calls = 0

    def predict(self, inputs: list[str]) -> list[str]:
        self.calls += 1
        logprobs = self.lm.classify(
            [self.template.format(input=x) for x in inputs], [" " + x for x in self.labels]
        )
        return [self.labels[i] for i in np.argmax(logprobs, axis=1)]


REVIEWS = ["A warm, funny and moving film.", "Dull, far too long and badly acted.", "I loved every minute."]


@pytest.fixture(scope="module")
def program(server, hf_model):
    program = TemplateClassifier(
        hf_model, "Review: {input}\nSentiment (positive or negative):", ["positive", "negative"]
    )
    server.state.models.add_program("sentiment", program)
    return program


def test_models_lists_the_base_model_and_the_program(server, program):
    models = {m.id: m for m in server.client.models.list()}
    assert list(models) == ["default", "sentiment"]
    assert models["sentiment"].model_extra["labels"] == ["positive", "negative"]
    assert server.client.models.retrieve("sentiment").id == "sentiment"


def test_completions_return_the_programs_answers(server, program):
    response = server.client.completions.create(model="sentiment", prompt=REVIEWS)
    assert [c.text for c in response.choices] == program.predict(REVIEWS)
    assert response.model == "sentiment" and response.usage.completion_tokens > 0


def test_chat_answers_the_last_user_message(server, program):
    messages = [
        {"role": "user", "content": "ignored"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": REVIEWS[1]},
    ]
    reply = server.client.chat.completions.create(model="sentiment", messages=messages)
    assert reply.choices[0].message.content == program.predict([REVIEWS[1]])[0]
    chunks = list(server.client.chat.completions.create(model="sentiment", messages=messages, stream=True))
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == reply.choices[0].message.content
    )


def test_concurrent_program_requests_share_one_predict_call(server, program):
    from concurrent.futures import ThreadPoolExecutor

    calls = program.calls
    with ThreadPoolExecutor(3) as pool:
        answers = list(
            pool.map(
                lambda r: server.client.completions.create(model="sentiment", prompt=r).choices[0].text,
                REVIEWS,
            )
        )
    assert answers == program.predict(REVIEWS)
    assert program.calls - calls - 1 <= 3  # batched calls plus the reference call above


@pytest.mark.parametrize("fields", [{"n": 2}, {"logprobs": 1}, {"echo": True}, {"reward": "length"}])
def test_unsupported_options_for_a_program_are_400(server, program, fields):
    response = httpx.post(
        f"{server.base_url}/completions", json={"model": "sentiment", "prompt": "Hi", **fields}
    )
    assert response.status_code == 400 and response.json()["error"]["message"]


def test_a_program_name_cannot_shadow_another_model(server, program, hf_model):
    with pytest.raises(DLNError):
        server.state.models.add_program("default", program)
    with pytest.raises(DLNError):
        server.state.models.add_program("other", object())


def test_program_spec_errors_are_clear(tmp_path):
    with pytest.raises(DLNError, match="NAME=VALUE"):
        load_program_spec("no-equals-sign")
    with pytest.raises(DLNError, match="no program file"):
        load_program_spec(f"x={tmp_path / 'missing.json'}")
    path = tmp_path / "program.json"
    path.write_text("{}")
    if importlib.util.find_spec("dln.program") is None:
        with pytest.raises(DLNError, match="dln.load_program"):
            load_program_spec(f"x={path}")


def test_a_trained_program_file_is_served(server, hf_model, tmp_path):
    program_module = pytest.importorskip("dln.program")
    from dln.layers import LanguageLayer
    from serving.models import share_base_model

    path = tmp_path / "program.json"
    program_module.Program(
        model_uri="hf:default",
        output=LanguageLayer(prompt="Is the sentiment of this review positive or negative?"),
        labels=["positive", "negative"],
    ).save(path)
    name, program = load_program_spec(f"mood={path}")
    assert name == "mood" and share_base_model(program, hf_model, "hf:default")  # no second copy of the model
    server.state.models.add_program(name, program)
    response = server.client.completions.create(model="mood", prompt=REVIEWS)
    assert [c.text for c in response.choices] == program.predict(REVIEWS)
    assert set(program.predict(REVIEWS)) <= {"positive", "negative"}
