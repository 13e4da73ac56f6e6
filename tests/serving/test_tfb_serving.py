"""`dln serve --tfb NAME=DIR[@S]`: a Bayesianized LoRA adapter served as a model name, over real HTTP.

A tiny MAP adapter is trained here (2 steps on `sentiment`), Bayesianized by a short σ search, and served next
to the base model; the real `openai` client reads the answer and its predictive distribution.
"""

from __future__ import annotations

import numpy as np
import pytest

from dln.cli import main
from dln.errors import DLNError
from serving.models import load_tfb_spec

REVIEWS = ["The food was great and the staff were lovely.", "It broke after one day, a waste of money."]
LABELS = ["good", "bad"]


@pytest.fixture(scope="module")
def tfb_dir(tmp_path_factory):
    from reasoning.tfb.bayesian_lora import BayesianLoRA
    from reasoning.tfb.config import MapTrainConfig
    from reasoning.tfb.map_train import train_map

    root = tmp_path_factory.mktemp("tfb")
    config = MapTrainConfig(
        task="sentiment",
        prompt="Is the review good or bad? Answer good or bad.",
        steps=2,
        batch_size=4,
        train_limit=8,
    )
    train_map(config, root / "A", progress=False)
    bayes = BayesianLoRA.load(root / "A")
    bayes.fit(REVIEWS * 2, metric="nll", tolerance=0.5, samples=1, sigma_min=1e-3, sigma_max=0.1, steps=1)
    return bayes.save(root / "A-tfb"), root / "A"


@pytest.fixture(scope="module")
def program(server, tfb_dir):
    name, program = load_tfb_spec(f"mood={tfb_dir[0]}@3")
    assert name == "mood" and program.samples == 3 and program.labels == LABELS
    server.state.models.add_program(name, program)
    return program


def test_models_lists_the_adapter_with_its_labels_and_sigma(server, program):
    models = {m.id: m for m in server.client.models.list()}
    card = models["mood"].model_extra
    assert card["labels"] == LABELS and card["kind"] == "tfb-adapter"
    assert card["sigma"] == program.sigma and card["samples"] == 3 and card["task"] == "sentiment"


def test_completion_answers_the_most_probable_label_with_the_distribution(server, program):
    response = server.client.completions.create(model="mood", prompt=REVIEWS)
    expected = program.predict_proba(REVIEWS)  # (2, 2): the same seeded weight draws as the server's call
    for choice, row in zip(response.choices, expected, strict=True):
        extra = choice.model_extra
        probs = extra["label_probs"]
        assert list(probs) == LABELS and abs(sum(probs.values()) - 1.0) < 1e-9
        np.testing.assert_allclose([probs[y] for y in LABELS], row, atol=1e-5)
        assert choice.text == max(probs, key=probs.get) == LABELS[int(np.argmax(row))]
        assert extra["samples"] == 3 and extra["sigma"] == program.sigma and program.sigma > 0


def test_chat_and_its_stream_carry_the_distribution(server, program):
    messages = [{"role": "user", "content": REVIEWS[1]}]
    reply = server.client.chat.completions.create(model="mood", messages=messages)
    probs = reply.choices[0].model_extra["label_probs"]
    assert reply.choices[0].message.content == max(probs, key=probs.get)
    chunks = list(server.client.chat.completions.create(model="mood", messages=messages, stream=True))
    extras = [c.choices[0].model_extra for c in chunks if c.choices]
    streamed = [e["label_probs"] for e in extras if e and "label_probs" in e]
    assert streamed == [probs]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content


def test_zero_samples_is_the_map_adapter(program):
    from reasoning.tfb.program import TFBProgram

    map_program = TFBProgram(program.bayes, samples=0)
    np.testing.assert_array_equal(
        map_program.predict_proba(REVIEWS), program.bayes.predict_proba(REVIEWS, samples=0)
    )
    assert map_program.predict(REVIEWS)[0].extra["samples"] == 0


def test_tfb_spec_errors_are_clear(tfb_dir, tmp_path):
    tfb, map_adapter = tfb_dir
    with pytest.raises(DLNError, match="NAME=VALUE"):
        load_tfb_spec(str(tfb))
    with pytest.raises(DLNError, match="--tfb x: no Bayesianized adapter directory"):
        load_tfb_spec(f"x={tmp_path / 'missing'}")
    for bad in ("@two", "@-1", "@"):
        with pytest.raises(DLNError, match="integer >= 0"):
            load_tfb_spec(f"x={tfb}{bad}")
    with pytest.raises(DLNError, match="no tfb.json"):
        load_tfb_spec(f"x={map_adapter}")


def test_cli_takes_tfb_and_fails_before_loading_the_model(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "--tfb" in capsys.readouterr().out
    assert main(["serve", "--tfb", f"x={tmp_path / 'missing'}@5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dln: error:") and "no Bayesianized adapter directory" in err
