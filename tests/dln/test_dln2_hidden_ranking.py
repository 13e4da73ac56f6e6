"""DLN-2's `hidden_ranking`, through `dln2_step` with a fake model of known densities: which hidden prompt
wins under each ranking is known in advance.

The current hidden prompt makes q's samples likely (log p(h | x) = -0.5 per token against -3.0) but its own
greedy text (`VAGUE`) leaves the output layer at p(gold) = 0.4; the proposed prompt `NAME-IT` writes
`SAYS-GOOD`, after which the output layer is right (0.9 on the first half of the batch, 0.7 on the second).
The paper's posterior step keeps the current prompt; the forward ranking takes the proposal.
"""

from __future__ import annotations

import math

import pytest

from dln.config import build_config
from dln.dln1 import Batch
from dln.dln2 import dln2_step
from dln.layers import LanguageLayer
from dln.train_config import TrainConfig
from tests.dln.fakes import HintedSampleModel, content

INPUTS = ["first review", "second review", "third review", "fourth review"]
CURRENT_HIDDEN, PROPOSED_HIDDEN = "HIDDEN-PROMPT", "NAME-IT"
GREEDY_TEXT = {CURRENT_HIDDEN: "VAGUE", PROPOSED_HIDDEN: "SAYS-GOOD"}
LOG_P_TOKEN = {CURRENT_HIDDEN: -0.5, PROPOSED_HIDDEN: -3.0}  # log p(h | x) per token of q's sample
P_GOOD = {"VAGUE": [0.4] * 4, "SAYS-GOOD": [0.9, 0.7, 0.9, 0.7], "HINTED": [0.5] * 4}


class TableModel(HintedSampleModel):
    def __init__(self) -> None:
        self.hidden_requests: list[str] = []

    def _score_ids(self, contexts, continuations):
        prompts = [next(p for p in LOG_P_TOKEN if content(c).startswith(p)) for c in contexts]
        return [[LOG_P_TOKEN[p]] * len(ids) for p, ids in zip(prompts, continuations)]

    def _score(self, contexts, continuations):
        out = []
        for context, label in zip(contexts, continuations):
            text = content(context)
            hidden = next(h for h in P_GOOD if h in text)
            p = P_GOOD[hidden][next(i for i, x in enumerate(INPUTS) if x in text)]
            out.append([math.log(p if label.strip() == "good" else 1 - p)])
        return out

    def _generate(self, prompts, options):
        out = []
        for prompt in prompts:
            text = content(prompt)
            layer = next((p for p in GREEDY_TEXT if text.startswith(p)), None)
            if layer is not None:  # a hidden layer's forward pass
                out.append([GREEDY_TEXT[layer]] * options.n)
            elif f"Current instruction: {CURRENT_HIDDEN}" in text:
                self.hidden_requests.append(text)
                out.append([PROPOSED_HIDDEN] * options.n)
            else:  # the output layer's backward request: propose the current prompt again
                out.append(["CURRENT"] * options.n)
        return out


def step(**keys) -> tuple[str, dict, TableModel]:
    config = build_config(
        TrainConfig,
        {"method": "dln2", "task": "sentiment", "num_candidates": 2, "num_hidden_samples": 2, **keys},
    )
    hidden = LanguageLayer(CURRENT_HIDDEN, config.hidden_template)
    output = LanguageLayer("CURRENT", config.template)
    model = TableModel()
    batch = Batch(INPUTS, ["good"] * 4, [["bad", "good"]] * 4)
    metrics = dln2_step(hidden, output, model, model, batch, config, ["bad", "good"], seed=0)
    assert output.prompt == "CURRENT"
    return hidden.prompt, metrics, model


def test_posterior_ranking_keeps_the_prompt_that_makes_q_s_samples_likely():
    chosen, metrics, _ = step()
    assert chosen == CURRENT_HIDDEN
    assert metrics["hidden_objective"] == pytest.approx(2 * LOG_P_TOKEN[CURRENT_HIDDEN])  # 2-token samples


def test_forward_ranking_takes_the_prompt_whose_own_text_the_output_layer_answers_from():
    chosen, metrics, _ = step(hidden_ranking="forward")
    assert chosen == PROPOSED_HIDDEN
    assert metrics["hidden_objective"] == pytest.approx((math.log(0.9) + math.log(0.7)) / 2)


def test_forward_ranking_by_accuracy_breaks_ties_by_log_likelihood(monkeypatch):
    monkeypatch.setitem(P_GOOD, "VAGUE", [0.6] * 4)  # right on every input too: the log-likelihood decides
    assert step(hidden_ranking="forward", select_by="accuracy")[0] == PROPOSED_HIDDEN
    monkeypatch.setitem(P_GOOD, "VAGUE", [0.95] * 4)
    assert step(hidden_ranking="forward", select_by="accuracy")[0] == CURRENT_HIDDEN
    monkeypatch.setitem(P_GOOD, "SAYS-GOOD", [0.55] * 4)  # right on every input, mean log p(gold) -0.60
    monkeypatch.setitem(P_GOOD, "VAGUE", [0.99, 0.45, 0.99, 0.45])  # right on half, mean log p(gold) -0.40
    assert step(hidden_ranking="forward", select_by="accuracy")[0] == PROPOSED_HIDDEN
    assert step(hidden_ranking="forward", select_by="loglik")[0] == CURRENT_HIDDEN


def test_forward_ranking_with_held_out_ranking_writes_from_one_half_and_ranks_on_the_other():
    chosen, metrics, model = step(hidden_ranking="forward", held_out_ranking=True)
    (request,) = model.hidden_requests
    assert "first review" in request and "third review" in request
    assert "second review" not in request and "fourth review" not in request
    assert chosen == PROPOSED_HIDDEN
    assert metrics["hidden_objective"] == pytest.approx(math.log(0.7))  # the second half only


def test_hidden_ranking_is_checked():
    from dln.errors import DLNError

    with pytest.raises(DLNError, match="hidden_ranking must be posterior or forward"):
        build_config(TrainConfig, {"method": "dln2", "hidden_ranking": "greedy"})
