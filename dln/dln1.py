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
    known = current_rows if rank_half is propose_half else None  # the current prompt's rows, just computed
    best, loglik, accuracy = rank_prompts(layer, model, candidates, rank_half, config.select_by, known=known)
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


def rank_prompts(
    layer: LanguageLayer,
    model: LanguageModel,
    candidates: list[str],
    batch: Batch,
    select_by: str,
    hidden: list[str] | None = None,
    known: list[np.ndarray] | None = None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """(index of the best candidate, mean log p(gold | x) per candidate, accuracy per candidate) on `batch`.

    `select_by`: `loglik`, or `accuracy` with the log-likelihood as the tie-break (a near-chance model can
    raise the log-likelihood by moving its label bias alone). Ties keep the earlier candidate (the current
    prompt).
    `hidden`: DLN-2's hidden texts, one per example; `known`: candidate 0's label rows, already computed.
    """
    todo = candidates[1:] if known is not None else candidates
    per_example = label_logprobs(layer, model, todo, batch.inputs, batch.label_sets, hidden) if todo else []
    per_example = ([known] if known is not None else []) + per_example
    return select_best(per_example, batch, select_by)


def select_best(
    per_example: list[np.ndarray], batch: Batch, select_by: str
) -> tuple[int, np.ndarray, np.ndarray]:
    """`rank_prompts`'s choice from each candidate's label log-prob rows on `batch` (one array per
    candidate): (index of the best, mean log p(gold | x) per candidate, accuracy per candidate)."""
    loglik = gold_logprobs(per_example, batch.targets, batch.label_sets).mean(axis=1)
    accuracy = np.array(
        [
            np.mean([p == t for p, t in zip(predictions(rows, batch.label_sets), batch.targets)])
            for rows in per_example
        ]
    )
    keys = list(zip(accuracy, loglik)) if select_by == "accuracy" else list(loglik)
    best = max(range(len(per_example)), key=lambda i: (keys[i], -i))
    return best, loglik, accuracy


def split_for_ranking(batch: Batch, held_out: bool) -> tuple[Batch, Batch]:
    """(examples the proposals are written from, examples the candidates are ranked on): the two halves of
    the minibatch (every other example, so a class-balanced batch gives balanced halves), or it twice."""
    if not held_out or len(batch.inputs) < 2:
        return batch, batch
    inputs, targets, label_sets = (
        split_rows(rows, True) for rows in (batch.inputs, batch.targets, batch.label_sets)
    )
    return Batch(inputs[0], targets[0], label_sets[0]), Batch(inputs[1], targets[1], label_sets[1])


def split_rows(rows: list, held_out: bool) -> tuple[list, list]:
    """The halves `split_for_ranking` cuts (every other row), or `rows` twice; for per-example extras."""
    if not held_out or len(rows) < 2:
        return rows, rows
    return rows[0::2], rows[1::2]
