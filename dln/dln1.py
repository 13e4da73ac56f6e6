"""One DLN-1 iteration: propose prompts from the minibatch's successes and errors, keep the best scorer.

Objective of a prompt π on a minibatch: mean over examples of log p(gold | x, π) normalised over the label set
(the paper's choice: smoother than accuracy, and zero-cost to compute alongside the predictions).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dln.backward import Example, propose_prompts
from dln.layers import LanguageLayer
from dln.lm.base import LanguageModel
from dln.scoring import gold_logprobs, label_logprobs, predictions
from dln.train_config import TrainConfig

EXAMPLES_SHOWN = 4  # successes and errors each shown to the backward LLM; a small model needs short prompts


@dataclass
class Batch:
    inputs: list[str]
    targets: list[str]
    label_sets: list[list[str]]


def evaluate_prompt(
    layer: LanguageLayer, model: LanguageModel, prompt: str, batch: Batch, hidden: list[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """log p(gold) per example and the predicted labels, for one prompt."""
    (rows,) = label_logprobs(layer, model, [prompt], batch.inputs, batch.label_sets, hidden)
    return gold_logprobs([rows], batch.targets, batch.label_sets)[0], predictions(rows, batch.label_sets)


def split_outcomes(batch: Batch, predicted: list[str], hidden: list[str] | None = None):
    show = [
        x if hidden is None else f"{x}\nReasoning: {h}" for x, h in zip(batch.inputs, hidden or batch.inputs)
    ]
    examples = [Example(x, t, p) for x, t, p in zip(show, batch.targets, predicted)]
    successes = [e for e in examples if e.output == e.target][:EXAMPLES_SHOWN]
    errors = [e for e in examples if e.output != e.target][:EXAMPLES_SHOWN]
    return successes, errors


def propose(
    backward: LanguageModel,
    config: TrainConfig,
    prompt: str,
    successes: list[Example],
    errors: list[Example],
    labels: list[str],
    seed: int,
) -> list[str]:
    """The N-1 proposals of one iteration, with the config's backward sampling settings."""
    return propose_prompts(
        backward,
        prompt,
        successes,
        errors,
        labels,
        num=config.num_candidates - 1,
        temperature=config.backward_temperature,
        max_tokens=config.backward_max_tokens,
        seed=seed,
    )


def dln1_step(
    layer: LanguageLayer,
    model: LanguageModel,
    backward: LanguageModel,
    batch: Batch,
    config: TrainConfig,
    labels: list[str],
    seed: int,
    hidden: list[str] | None = None,
) -> dict:
    """Update `layer.prompt` in place; return the iteration's metrics."""
    current = layer.prompt
    gold_current, predicted = evaluate_prompt(layer, model, current, batch, hidden)
    successes, errors = split_outcomes(batch, predicted, hidden)
    proposals = propose(backward, config, current, successes, errors, labels, seed)
    scores = [float(gold_current.mean())]
    if proposals:
        per_example = label_logprobs(layer, model, proposals, batch.inputs, batch.label_sets, hidden)
        scores += gold_logprobs(per_example, batch.targets, batch.label_sets).mean(axis=1).tolist()
    best = int(np.argmax(scores))  # ties keep the current prompt (index 0)
    layer.prompt = ([current] + proposals)[best]
    return {
        "objective": scores[best],
        "objective_before": scores[0],
        "train_accuracy_before": float(np.mean([p == t for p, t in zip(predicted, batch.targets)])),
        "candidates": len(scores),
        "prompt_changed": best != 0,
    }
