"""Prompt training on the real default model: it improves its objective, resumes exactly, and round-trips."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dln import DLNError, load_program
from dln.config import build_config
from dln.dln1 import Batch
from dln.dln2 import dln2_step
from dln.layers import LanguageLayer
from dln.lm import load_model
from dln.lm.base import LanguageModel
from dln.train import PromptTrainer, balanced_minibatch, dev_subset
from dln.train_config import TrainConfig

TINY = {
    "task": "sentiment",
    "iterations": 2,
    "batch_size": 6,
    "num_candidates": 3,
    "dev_size": 12,
    "backward_max_tokens": 48,
    "eval_every": 1,
    "seed": 3,  # one whose 2 x 3 proposals include one that beats the prompt (most seeds do not)
}


def tiny(**changes) -> TrainConfig:
    return build_config(TrainConfig, {**TINY, **changes})


class InterruptAfter(LanguageModel):
    """The real model, interrupted (as by Ctrl-C or a kill) at its n-th generate call."""

    def __init__(self, inner: LanguageModel, calls: int) -> None:
        self.inner, self.uri, self.calls = inner, inner.uri, calls

    def _generate(self, prompts, options):
        self.calls -= 1
        if self.calls < 0:
            raise KeyboardInterrupt
        return self.inner._generate(prompts, options)

    def _score(self, contexts, continuations):
        return self.inner._score(contexts, continuations)


def test_balanced_minibatch_takes_every_class_in_turn():
    import random

    targets = ["a"] * 10 + ["b"] * 3 + ["c"] * 5
    picked = balanced_minibatch(targets, 9, random.Random(0))
    counts = {label: sum(targets[i] == label for i in picked) for label in "abc"}
    assert counts == {"a": 3, "b": 3, "c": 3} and len(set(picked)) == 9


def test_the_dev_subset_is_class_balanced_and_the_same_for_every_run():
    from datasets import Dataset

    dev = Dataset.from_dict({"target": ["Yes"] * 30 + ["No"] * 10})  # a prefix of 20 would be all "Yes"
    picked = dev_subset(dev, 20)
    assert sorted(dev[i]["target"] for i in picked).count("No") == 10 and len(set(picked)) == 20
    assert dev_subset(dev, 20) == picked
    assert dev_subset(dev, 0) is None and dev_subset(dev, 40) is None  # 0 or the whole split: all of it


@pytest.fixture(scope="module")
def trained(hf_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    program = PromptTrainer(tiny(), str(out), model=hf_model, progress=False).fit()
    return out, program


def test_training_raises_the_objective_and_writes_the_run(trained):
    out, program = trained
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m["iteration"] > 0]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert all(m["objective"] >= m["objective_before"] for m in steps)
    assert any(m["objective"] > m["objective_before"] + 1e-6 for m in steps), "no proposal beat the prompt"
    assert {"config.yaml", "checkpoint.json", "program.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    best_dev = max(m["dev_accuracy"] for m in metrics)
    assert program.metadata["dev_accuracy"] == best_dev  # the best prompt on dev is restored


def test_program_round_trips_and_answers_like_the_trainer(trained, hf_model):
    out, program = trained
    loaded = load_program(out / "program.json", model=hf_model)
    assert loaded.output.prompt == program.output.prompt and loaded.labels == ["good", "bad"]
    inputs = ["This blender deserves five stars.", "The hotel room was a disaster."]
    assert loaded.predict(inputs) == program.predict(inputs)
    assert loaded(inputs[0]) in {"good", "bad"}


def test_an_interrupted_run_resumes_to_the_same_program(trained, hf_model, tmp_path):
    out, program = trained
    with pytest.raises(KeyboardInterrupt):
        # one generate call per iteration in DLN-1: the second iteration is cut off mid-way
        PromptTrainer(tiny(), str(tmp_path), model=InterruptAfter(hf_model, 1), progress=False).fit()
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert checkpoint["iteration"] == 1 and not (tmp_path / "program.json").exists()
    resumed = PromptTrainer(tiny(), str(tmp_path), model=hf_model, progress=False).fit()
    assert resumed.to_dict() == program.to_dict()
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    # the wall time counts on from the interrupted process's, not from zero
    seconds = [m["seconds"] for m in metrics]
    assert seconds[1] == checkpoint["seconds"] and seconds == sorted(seconds) and seconds[0] > 0


def test_zero_iterations_keeps_the_initial_prompt(hf_model, tmp_path):
    program = PromptTrainer(tiny(iterations=0), str(tmp_path), model=hf_model, progress=False).fit()
    assert program.output.prompt == TINY.get("initial_prompt", TrainConfig.initial_prompt)


def test_init_from_starts_dln2_from_a_finished_dln1_program(hf_model, tmp_path):
    source = tmp_path / "dln1"
    PromptTrainer(
        tiny(iterations=0, initial_prompt="Is this review good or bad?"),
        str(source),
        model=hf_model,
        progress=False,
    ).fit()
    config = tiny(method="dln2", iterations=0, dev_size=4, hidden_max_tokens=8, init_from=str(source))
    program = PromptTrainer(config, str(tmp_path / "dln2"), model=hf_model, progress=False).fit()
    assert program.output.prompt == "Is this review good or bad?"
    assert program.hidden.prompt == config.hidden_prompt  # a DLN-1 source has no hidden prompt to give


def test_init_from_a_missing_run_names_it(hf_model, tmp_path):
    with pytest.raises(DLNError, match="no program at .*nowhere"):
        PromptTrainer(tiny(init_from=str(tmp_path / "nowhere")), str(tmp_path / "run"), model=hf_model)


def test_icl_baseline_puts_train_examples_in_the_prompt(hf_model, tmp_path):
    program = PromptTrainer(
        tiny(method="icl", icl_shots=2), str(tmp_path), model=hf_model, progress=False
    ).fit()
    assert program.output.prompt.count("Input:") == 2 and program.kind == "dln1"


def test_a_run_directory_refuses_a_different_config(hf_model, trained):
    out, _ = trained
    with pytest.raises(DLNError, match="different config"):
        PromptTrainer(tiny(seed=99), str(out), model=hf_model, progress=False).fit()


def test_dln2_step_reports_bounds_and_keeps_them_ordered(hf_model, tmp_path):
    config = tiny(
        method="dln2",
        iterations=1,
        batch_size=4,
        num_candidates=2,
        num_hidden_samples=2,
        hidden_max_tokens=16,
    )
    program = PromptTrainer(config, str(tmp_path), model=hf_model, progress=False).fit()
    (step,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert step["elbo"] <= step["iw_bound"] + 1e-9  # per-example ELBO <= IW bound, so also their means
    assert 1.0 <= step["ess"] <= 2.0
    assert program.kind == "dln2" and program.hidden is not None
    assert program.predict(["Great film."])[0] in {"good", "bad"}


def test_dln2_step_ess_comes_from_the_same_weights_as_its_bounds(hf_model):
    """With one example and K=2 the logged bounds fix the ESS exactly.

    For log-weights a, b: iw_bound - elbo = log cosh((a - b) / 2), so |a - b| = 2 acosh(exp(iw - elbo)), the
    normalised weights are sigmoid(±(a - b)) and ESS = 1 / (p² + (1 - p)²).
    """
    config = tiny(method="dln2", batch_size=1, num_candidates=2, num_hidden_samples=2, hidden_max_tokens=16)
    batch = Batch(["A warm, funny and moving film."], ["good"], [["bad", "good"]])
    hidden = LanguageLayer(config.hidden_prompt, config.hidden_template)
    output = LanguageLayer(config.initial_prompt, config.template)
    step = dln2_step(hidden, output, hf_model, hf_model, batch, config, ["bad", "good"], seed=7)
    gap = 2 * math.acosh(math.exp(step["iw_bound"] - step["elbo"]))
    p = 1 / (1 + math.exp(-gap))
    assert step["ess"] == pytest.approx(1 / (p**2 + (1 - p) ** 2), abs=1e-6)


def test_decode_dtype_gives_the_trainer_a_bf16_decoder_and_keeps_scoring_in_fp32(tmp_path):
    """`decode_dtype` reaches the backend: proposals decode on a bf16 copy (named in the cache key), while
    scores come from the fp32 weights, equal to a model opened without it."""
    config = tiny(decode_dtype="bfloat16", iterations=0)
    trainer = PromptTrainer(config, str(tmp_path), progress=False)
    lm = getattr(trainer.model, "inner", trainer.model)
    assert lm.decoder.dtype == torch.bfloat16 and lm.model.dtype == torch.float32
    assert trainer.model.uri.endswith("#decode=bfloat16")
    plain = load_model("hf:default", cache=False)
    context, continuation = ["The capital of France is"], [" Paris"]
    assert trainer.model.score(context, continuation)[0] == pytest.approx(
        plain.score(context, continuation)[0], abs=1e-5
    )


def test_a_program_trained_in_bf16_reopens_its_bf16_model(tmp_path):
    """`dtype` reaches the backend, is named in its cache key, and is saved in program.json: a loaded
    program answers with the model it was trained on, not with the fp32 one."""
    trainer = PromptTrainer(tiny(dtype="bfloat16", iterations=0), str(tmp_path), progress=False)
    assert trainer.model.uri.endswith("#dtype=bfloat16")
    trainer.fit()
    program = load_program(tmp_path / "program.json")
    assert program.model_options == {"dtype": "bfloat16"}
    lm = getattr(program.model, "inner", program.model)
    assert lm.model.dtype == torch.bfloat16
