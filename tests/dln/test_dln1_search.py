"""DLN-1's search choices (`held_out_ranking`, `memory`, `select_by`), through `dln1_step` with a fake model
whose label probabilities are a table: which candidate wins is known in advance."""

from __future__ import annotations

import math

import pytest

from dln.config import build_config
from dln.dln1 import Batch, dln1_step
from dln.layers import LanguageLayer
from dln.lm.base import LanguageModel
from dln.train_config import TrainConfig

INPUTS = ["first review", "second review", "third review", "fourth review"]
# p(gold = good | x, prompt) per prompt and input
TABLE = {
    "CURRENT": [0.40, 0.40, 0.40, 0.40],  # wrong everywhere
    "CONFIDENT": [0.99, 0.45, 0.99, 0.45],  # high log-likelihood, accuracy 1/2
    "STEADY": [0.55, 0.55, 0.55, 0.55],  # lower log-likelihood, accuracy 1
}


class TableModel(LanguageModel):
    uri = "fake:"

    def __init__(self, proposal: str) -> None:
        self.proposal, self.backward_prompts = proposal, []

    def _score(self, contexts, continuations):
        out = []
        for context, label in zip(contexts, continuations):
            text = str(context)
            prompt = next(p for p in TABLE if p in text)
            p = TABLE[prompt][next(i for i, x in enumerate(INPUTS) if x in text)]
            out.append([math.log(p if label.strip() == "good" else 1 - p)])
        return out

    def _generate(self, prompts, options):
        self.backward_prompts += [str(p) for p in prompts]
        return [[self.proposal] * options.n for _ in prompts]


def step(proposal: str, memory=None, **keys) -> tuple[str, dict, TableModel]:
    config = build_config(TrainConfig, {"task": "sentiment", "num_candidates": 2, **keys})
    layer = LanguageLayer("CURRENT", "{{ prompt }} {{ input }} Answer:")
    model = TableModel(proposal)
    batch = Batch(INPUTS, ["good"] * 4, [["bad", "good"]] * 4)
    metrics = dln1_step(layer, model, model, batch, config, ["bad", "good"], seed=0, memory=memory)
    return layer.prompt, metrics, model


def test_loglik_selection_takes_the_confident_prompt_and_accuracy_the_steady_one():
    assert step("CONFIDENT")[0] == "CONFIDENT"
    assert step("STEADY")[0] == "STEADY"  # both beat CURRENT on either criterion
    assert step("CONFIDENT", memory=["STEADY"])[0] == "CONFIDENT"
    chosen, metrics, _ = step("CONFIDENT", memory=["STEADY"], select_by="accuracy")
    assert chosen == "STEADY" and metrics["rank_accuracy"] == 1.0 and metrics["remembered"] == 1


def test_a_remembered_prompt_is_a_candidate():
    chosen, metrics, _ = step("CURRENT is fine", memory=["CONFIDENT"])
    assert chosen == "CONFIDENT" and metrics["candidates"] == 3


def test_held_out_ranking_writes_proposals_from_one_half_and_ranks_on_the_other():
    chosen, metrics, model = step("CONFIDENT", held_out_ranking=True)
    shown = " ".join(model.backward_prompts)
    assert "first review" in shown or "third review" in shown
    assert "second review" not in shown and "fourth review" not in shown
    # ranked on the second half only, where CONFIDENT gives the gold label 0.45
    assert metrics["objective"] == pytest.approx(math.log(0.45))
    assert chosen == "CONFIDENT"


def test_memory_keeps_the_best_distinct_prompts_on_dev():
    from dln.train import remember

    state: dict = {}
    for prompt, dev in [("a", 0.5), ("b", 0.7), ("a", 0.6), ("c", 0.4)]:
        remember(state, prompt, dev, size=2)
    assert state["memory"] == [{"prompt": "b", "dev_accuracy": 0.7}, {"prompt": "a", "dev_accuracy": 0.6}]
