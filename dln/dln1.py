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
    memory: list[str] | None = None,
) -> dict:
    """Update `layer.prompt` in place; return the iteration's metrics.

    Candidates: the current prompt, the remembered prompts (`memory`: the best earlier prompts on dev), and
    N-1 proposals written from the successes and errors of `propose_half`. They are ranked on
    `rank_half` — the other half of the minibatch with `held_out_ranking`, else the same examples — by
    `select_by`: `loglik` (mean normalised log p(gold | x)) or `accuracy` with the log-likelihood as the
    tie-break (a near-chance model can raise the log-likelihood by moving its label bias alone).
    """
    current = layer.prompt
    propose_half, rank_half = split_for_ranking(batch, config.held_out_ranking)
    (current_rows,) = label_logprobs(layer, model, [current], propose_half.inputs, propose_half.label_sets)
    predicted = predictions(current_rows, propose_half.label_sets)
    successes, errors = split_outcomes(propose_half, predicted)
    proposals = propose(backward, config, current, successes, errors, labels, seed)
    remembered = [m for m in (memory or []) if m != current and m not in proposals]
    candidates = [current] + remembered + proposals
    if rank_half is propose_half:  # the current prompt's rows are the ones just computed
        others = candidates[1:]
        per_example = [current_rows] + (
            label_logprobs(layer, model, others, rank_half.inputs, rank_half.label_sets) if others else []
        )
    else:
        per_example = label_logprobs(layer, model, candidates, rank_half.inputs, rank_half.label_sets)
    gold = gold_logprobs(per_example, rank_half.targets, rank_half.label_sets)  # (C, B)
    loglik = gold.mean(axis=1)
    accuracy = np.array(
        [
            np.mean([p == t for p, t in zip(predictions(rows, rank_half.label_sets), rank_half.targets)])
            for rows in per_example
        ]
    )
    keys = list(zip(accuracy, loglik)) if config.select_by == "accuracy" else list(loglik)
    best = max(range(len(candidates)), key=lambda i: (keys[i], -i))  # ties keep the earlier (current) one
    layer.prompt = candidates[best]
    return {
        "objective": float(loglik[best]),
        "objective_before": float(loglik[0]),
        "rank_accuracy": float(accuracy[best]),
        "rank_accuracy_before": float(accuracy[0]),
        "train_accuracy_before": float(np.mean([p == t for p, t in zip(predicted, propose_half.targets)])),
        "candidates": len(candidates),
        "remembered": len(remembered),
        "prompt_changed": best != 0,
    }


def split_for_ranking(batch: Batch, held_out: bool) -> tuple[Batch, Batch]:
    """(examples the proposals are written from, examples the candidates are ranked on): the two halves of
    the minibatch (every other example, so a class-balanced batch gives balanced halves), or it twice."""
    if not held_out or len(batch.inputs) < 2:
        return batch, batch
    halves = [Batch(batch.inputs[h::2], batch.targets[h::2], batch.label_sets[h::2]) for h in (0, 1)]
    return halves[0], halves[1]
