"""The TFB posterior of a LoRA adapter: a low-rank isotropic Gaussian (SVD, sampling) and the σ search.

For every LoRA pair the effective update is ΔW = s·B A (s = alpha / r, B: (out, r), A: (r, in)). With the
thin SVD s·B = U diag(d) Vᵀ we re-parametrise

    B' = U diag(d) / s,   A' = Vᵀ A          (so s·B' A' = ΔW),

and sample A = A' + E with E_ij ~ N(0, (σ / d_i)²). The weight noise is then s·B' E = U Z with
Z_ij ~ N(0, σ²): every column of ΔW's noise is N(0, σ² U Uᵀ), isotropic σ² inside the adapter's column
space and zero outside it. Directions with d_i ≤ 1e-6 · max(d) (an untrained or rank-deficient B) get no
noise. One σ is shared by all layers.

σ is the largest value in [sigma_min, sigma_max] for which the model averaged over weight samples stays
within a tolerance ε of the MAP adapter on an anchor set (unlabelled inputs, labelled by the MAP's own
argmax): `acc`: accuracy(σ) ≥ accuracy(0) - ε; `nll`: (NLL(σ) - NLL(0)) / NLL(0) ≤ ε, NLL the mean over the
anchor set (not divided by its size again). Bisection in log σ keeps `lo` feasible and `hi` infeasible and
returns `lo`: the largest σ found within tolerance, never the first one that exceeds it. The search uses
common random numbers (the same noise draws at every σ), so the anchor metric is a deterministic function
of σ.

Prediction with the posterior is `reasoning.tfb.bayesian_lora.BayesianLoRA`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from dln.errors import DLNError

#: The documented default search range for σ (units of the effective weight update s·B A).
SIGMA_MIN, SIGMA_MAX = 1e-4, 1.0


@dataclass
class LoRAPair:
    """One LoRA layer: the MAP factors (restored after every sample) and the SVD re-parametrisation."""

    name: str
    a_weight: torch.nn.Parameter  # lora_A.weight, (r, in)
    b_weight: torch.nn.Parameter  # lora_B.weight, (out, r)
    a_map: torch.Tensor
    b_map: torch.Tensor
    a_prime: torch.Tensor  # Vᵀ A, (r, in)
    b_prime: torch.Tensor  # U diag(d) / s, (out, r)
    noise_std_per_sigma: torch.Tensor  # 1 / d_i (0 where d_i is negligible), (r, 1)


def lora_pairs(model, adapter: str = "default") -> list[LoRAPair]:
    """The SVD re-parametrisation of every LoRA pair of a PEFT model (weights are not changed)."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        s = float(module.scaling[adapter])
        with torch.no_grad():
            u, d, vt = torch.linalg.svd(s * b.double(), full_matrices=False)  # (out, r), (r,), (r, r)
            keep = d > 1e-6 * d.max().clamp(min=1e-300)
            inv = torch.where(keep, 1.0 / d.clamp(min=1e-300), torch.zeros_like(d))
            pairs.append(
                LoRAPair(
                    name=name,
                    a_weight=a,
                    b_weight=b,
                    a_map=a.detach().clone(),
                    b_map=b.detach().clone(),
                    a_prime=(vt @ a.double()).to(a.dtype),
                    b_prime=(u * d / s).to(b.dtype),
                    noise_std_per_sigma=inv.to(a.dtype).unsqueeze(1),
                )
            )
    if not pairs:
        raise DLNError("the model has no LoRA layers for adapter " + repr(adapter))
    return pairs


@contextlib.contextmanager
def sampled_weights(pairs: list[LoRAPair], sigma: float, generator: torch.Generator):
    """Within the block, every pair holds B', A' + diag(σ / d) Z with a fresh Z; the MAP factors after it."""
    try:
        with torch.no_grad():
            for p in pairs:
                noise = torch.randn(p.a_prime.shape, generator=generator, dtype=p.a_prime.dtype)
                p.b_weight.copy_(p.b_prime)
                p.a_weight.copy_(p.a_prime + sigma * p.noise_std_per_sigma * noise.to(p.a_prime.device))
        yield
    finally:
        with torch.no_grad():
            for p in pairs:
                p.a_weight.copy_(p.a_map)
                p.b_weight.copy_(p.b_map)


@dataclass
class AnchorScore:
    accuracy: float
    nll: float


@dataclass
class SigmaSearch:
    sigma: float
    metric: str
    tolerance: float
    reference: AnchorScore
    sigma_min: float
    sigma_max: float
    steps: int
    trace: list[dict] = field(default_factory=list)  # every evaluated σ with its score and verdict
    note: str = ""


def within_tolerance(score: AnchorScore, reference: AnchorScore, metric: str, tolerance: float) -> bool:
    if metric == "acc":
        return reference.accuracy - score.accuracy <= tolerance
    return (score.nll - reference.nll) / max(reference.nll, 1e-12) <= tolerance


def search_sigma(
    evaluate: Callable[[float], AnchorScore],
    *,
    metric: str = "acc",
    tolerance: float = 0.01,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    steps: int = 8,
) -> SigmaSearch:
    """The largest σ in [sigma_min, sigma_max] whose anchor score is within tolerance of σ = 0 (bisection).

    Args:
        evaluate: σ -> AnchorScore of the model averaged over weight samples at σ (σ = 0: the MAP).
        metric: `acc` (absolute accuracy drop ≤ tolerance) or `nll` (relative NLL increase ≤ tolerance).
        steps: bisection steps in log σ; the answer is within a factor (max/min)^(1/2^steps) below the
            boundary.

    Returns:
        σ = sigma_max when it is within tolerance, 0 (the MAP) when even sigma_min is not, else the feasible
        end of the final bracket.
    """
    if metric not in ("acc", "nll"):
        raise DLNError(f"unknown TFB metric {metric!r}; use acc or nll")
    if tolerance < 0 or not 0 < sigma_min < sigma_max or steps < 0:
        raise DLNError(
            f"need tolerance >= 0 and 0 < sigma_min < sigma_max, got tolerance={tolerance}, "
            f"range=[{sigma_min}, {sigma_max}]"
        )
    reference = evaluate(0.0)
    result = SigmaSearch(0.0, metric, tolerance, reference, sigma_min, sigma_max, steps)

    def ok(sigma: float) -> bool:
        score = evaluate(sigma)
        verdict = within_tolerance(score, reference, metric, tolerance)
        result.trace.append({"sigma": sigma, **asdict(score), "within": verdict})
        return verdict

    if ok(sigma_max):
        result.sigma, result.note = sigma_max, "sigma_max is within tolerance: widen the range"
        return result
    if not ok(sigma_min):
        result.note = "sigma_min already exceeds the tolerance: the MAP adapter (sigma 0) is returned"
        return result
    lo, hi = sigma_min, sigma_max  # invariant: lo within tolerance, hi not
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    result.sigma = lo
    return result
