"""The baselines TFB is compared with: MC-dropout (LoRA dropout on at inference) and temperature scaling.

- MC-dropout: p(y | x) = 1/S Σ_s p(y | x, dropout mask m_s), the adapter's own LoRA dropout switched on;
- temperature scaling: p_T(y | x) = softmax(log p(y | x) / T), T = argmin_T NLL on held-out data.
"""

from __future__ import annotations

import numpy as np
import torch

from dln.errors import DLNError
from reasoning.tfb.bayesian_lora import label_probs
from reasoning.tfb.metrics import nll


@torch.no_grad()
def mc_dropout_proba(
    bayes,
    inputs: list[str] | None = None,
    *,
    samples: int = 10,
    seed: int = 0,
    encoded: list[list[int]] | None = None,
    row_labels: list[list[str]] | None = None,
) -> np.ndarray:
    """The MC-dropout baseline: LoRA dropout switched on at inference, probabilities averaged."""
    from peft.tuners.lora import LoraLayer

    encoded = encoded if encoded is not None else bayes.scorer.encode(list(inputs or []))
    mask = bayes.scorer.label_mask(row_labels, len(encoded))
    layers = [m for m in bayes.model.modules() if isinstance(m, LoraLayer)]
    dropouts = [d for m in layers for d in m.lora_dropout.values()]
    if not any(isinstance(d, torch.nn.Dropout) and d.p > 0 for d in dropouts):
        raise DLNError("the adapter was trained without LoRA dropout; MC-dropout needs dropout > 0")
    total = torch.zeros(len(encoded), len(bayes.labels), dtype=torch.float64)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            for d in dropouts:
                d.train()
            for _ in range(max(samples, 1)):
                total += label_probs(bayes.scorer, encoded, mask)
        finally:
            for d in dropouts:
                d.eval()
    return (total / max(samples, 1)).numpy()


def scale(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) per row; -inf (labels not offered) stays at probability 0."""
    z = np.asarray(log_probs, dtype=np.float64) / temperature
    z = z - np.max(z, axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def fit_temperature(
    log_probs: np.ndarray, targets: np.ndarray, *, lo: float = 0.05, hi: float = 20.0, iterations: int = 60
) -> float:
    """argmin_T NLL(softmax(log p / T)) on held-out data, by golden-section search over log T in [lo, hi].

    The NLL of temperature-scaled logits is convex in 1/T, hence unimodal in log T.
    """

    def loss(log_t: float) -> float:
        return nll(scale(log_probs, float(np.exp(log_t))), np.asarray(targets))

    a, b = np.log(lo), np.log(hi)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(iterations):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(np.exp((a + b) / 2.0))
