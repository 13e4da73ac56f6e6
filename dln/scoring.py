"""Score many candidate prompts on many examples in as few backend calls as possible.

All (candidate, example) contexts that share a label set go to the backend in one `classify` call, which
computes each context once and reuses it for every label. The result is a matrix of log p(gold | x, π)
normalised over each example's label set, shape (num_prompts, num_examples).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dln.layers import LanguageLayer
from dln.lm.base import LanguageModel


def label_logprobs(
    layer: LanguageLayer,
    model: LanguageModel,
    prompts: Sequence[str],
    inputs: Sequence[str],
    label_sets: Sequence[Sequence[str]],
    hidden: Sequence[str] | None = None,
) -> list[list[np.ndarray]]:
    """[prompt][example] -> log-probs over that example's labels."""
    result: list[list[np.ndarray]] = [[np.empty(0)] * len(inputs) for _ in prompts]
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, labels in enumerate(label_sets):
        groups.setdefault(tuple(labels), []).append(i)
    for labels, rows in groups.items():
        sub_inputs = [inputs[i] for i in rows] * len(prompts)
        sub_hidden = [hidden[i] for i in rows] * len(prompts) if hidden is not None else None
        rendered_prompts = [p for p in prompts for _ in rows]
        contexts = [
            layer.render(x, prompt=p, hidden=h)
            for x, p, h in zip(sub_inputs, rendered_prompts, sub_hidden or [None] * len(sub_inputs))
        ]
        matrix = model.classify(contexts, [layer.label_text(y) for y in labels])  # (P * R, L)
        for j, row in enumerate(matrix):
            result[j // len(rows)][rows[j % len(rows)]] = row
    return result


def gold_logprobs(
    per_example: list[list[np.ndarray]], targets: Sequence[str], label_sets: Sequence[Sequence[str]]
) -> np.ndarray:
    """(num_prompts, num_examples) log p(gold) from `label_logprobs`' output."""
    gold = [list(labels).index(t) for t, labels in zip(targets, label_sets)]
    return np.array([[row[g] for row, g in zip(rows, gold)] for rows in per_example])


def predictions(per_example: list[np.ndarray], label_sets: Sequence[Sequence[str]]) -> list[str]:
    return [labels[int(np.argmax(row))] for row, labels in zip(per_example, label_sets)]
