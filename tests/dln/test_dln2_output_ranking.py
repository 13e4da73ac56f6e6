"""DLN-2's `output_ranking`, through `dln2_step` with a fake model whose label probabilities are a table over
(output prompt, hidden text, input): which output prompt wins under each ranking is known in advance.

q's samples carry the answer (the hidden text `HINTED`); the program's own greedy hidden text does not
(`PLAIN`). `READS_HINT` is right only when the hidden text gives the answer away; `ROBUST` is right on the
plain text, the one the program sees at test time.
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
HIDDEN_PROMPT = "HIDDEN-PROMPT"
# p(gold = good | prompt, hidden text, input)
TABLE = {
    ("CURRENT", "HINTED"): [0.40] * 4,
    ("CURRENT", "PLAIN"): [0.40] * 4,
    ("READS_HINT", "HINTED"): [0.99] * 4,
    ("READS_HINT", "PLAIN"): [0.30] * 4,
    ("ROBUST", "HINTED"): [0.60] * 4,
    ("ROBUST", "PLAIN"): [0.90, 0.70, 0.90, 0.70],  # 0.70 on the second half
}


class TableModel(HintedSampleModel):
    def __init__(self) -> None:
        self.backward_prompts: list[str] = []

    def _score_ids(self, contexts, continuations):
        return [[-0.5] * len(ids) for ids in continuations]

    def _score(self, contexts, continuations):
        out = []
        for context, label in zip(contexts, continuations):
            text = content(context)
            prompt = next(p for p in ("READS_HINT", "ROBUST", "CURRENT") if text.startswith(p))
            hidden = "HINTED" if "HINTED" in text else "PLAIN"
            p = TABLE[prompt, hidden][next(i for i, x in enumerate(INPUTS) if x in text)]
            out.append([math.log(p if label.strip() == "good" else 1 - p)])
        return out

    def _generate(self, prompts, options):
        out = []
        for prompt in prompts:
            text = content(prompt)
            if text.startswith(HIDDEN_PROMPT):  # the hidden layer's forward pass
                out.append(["PLAIN"] * options.n)
                continue
            self.backward_prompts.append(text)
            proposal = "READS_HINT" if "Current instruction: CURRENT" in text else HIDDEN_PROMPT
            out.append([proposal] * options.n)
        return out


def step(memory=None, **keys) -> tuple[str, dict, TableModel]:
    config = build_config(
        TrainConfig,
        {
            "method": "dln2",
            "task": "sentiment",
            "num_candidates": 2,
            "num_hidden_samples": 2,
            "hidden_prompt": HIDDEN_PROMPT,
            **keys,
        },
    )
    hidden = LanguageLayer(HIDDEN_PROMPT, config.hidden_template)
    output = LanguageLayer("CURRENT", config.template)
    model = TableModel()
    batch = Batch(INPUTS, ["good"] * 4, [["bad", "good"]] * 4)
    metrics = dln2_step(hidden, output, model, model, batch, config, ["bad", "good"], seed=0, memory=memory)
    return output.prompt, metrics, model


def test_posterior_ranking_takes_the_prompt_that_reads_q_s_hints():
    chosen, metrics, _ = step(memory=["ROBUST"])  # memory serves forward ranking, not the paper's step
    assert chosen == "READS_HINT"
    assert metrics["objective"] == pytest.approx(math.log(0.99))


def test_forward_ranking_takes_the_prompt_that_is_right_on_the_program_s_own_hidden_text():
    assert step(output_ranking="forward")[0] == "CURRENT"  # READS_HINT is worse than CURRENT on PLAIN
    chosen, metrics, model = step(memory=["ROBUST"], output_ranking="forward")
    assert chosen == "ROBUST"
    assert metrics["objective"] == pytest.approx(math.log(0.9) / 2 + math.log(0.7) / 2)
    assert metrics["train_accuracy_before"] == 0.0  # CURRENT answers bad (0.4) on the forward pass
    output_request = next(p for p in model.backward_prompts if "Current instruction: CURRENT" in p)
    assert "Reasoning: PLAIN" in output_request and "HINTED" not in output_request


def test_forward_ranking_with_held_out_ranking_writes_from_one_half_and_ranks_on_the_other():
    chosen, metrics, model = step(memory=["ROBUST"], output_ranking="forward", held_out_ranking=True)
    output_request = next(p for p in model.backward_prompts if "Current instruction: CURRENT" in p)
    assert "first review" in output_request and "third review" in output_request
    assert "second review" not in output_request and "fourth review" not in output_request
    assert chosen == "ROBUST"
    assert metrics["objective"] == pytest.approx(math.log(0.7))  # the second half only


def test_output_ranking_is_checked():
    from dln.errors import DLNError

    with pytest.raises(DLNError, match="output_ranking must be posterior or forward"):
        build_config(TrainConfig, {"method": "dln2", "output_ranking": "greedy"})
