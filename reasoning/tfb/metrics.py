"""Calibration metrics of a predictive distribution over labels, and temperature scaling.

`probs` is (N, K) with rows summing to 1 (labels an example does not offer have probability 0); `targets`
is (N,) label indices.

- accuracy = mean 1[argmax_k p_ik = y_i]
- ECE (15 equal-width confidence bins on (0, 1]) = Σ_b |B_b| / N · |acc(B_b) - conf(B_b)|, conf = max_k p_ik
- NLL = -mean log p_{i, y_i} (probabilities floored at 1e-12)
- Brier = mean Σ_k (p_ik - 1[k = y_i])²   (the multi-class sum, in [0, 2])
"""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == targets))


def ece(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    confidence = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def nll(probs: np.ndarray, targets: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(targets)), targets], EPS)))) + 0.0  # no -0.0


def brier(probs: np.ndarray, targets: np.ndarray) -> float:
    onehot = np.eye(probs.shape[1])[targets]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def all_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    probs, targets = np.asarray(probs, dtype=np.float64), np.asarray(targets)
    return {
        "acc": accuracy(probs, targets),
        "ece": ece(probs, targets),
        "nll": nll(probs, targets),
        "brier": brier(probs, targets),
    }
