"""Training-free Bayesianization (TFB) of a LoRA adapter: a low-rank isotropic Gaussian, σ found by search.

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

Prediction averages probabilities over S weight samples, p(y | x) = 1/S Σ_s p(y | x, W_s); S = 0 is the MAP
adapter itself (its original factors, bit for bit). Sampling is per-sample weights: one draw of E for all
layers, the whole batch is run with it, then the next draw. It costs S forwards of the data (S × MAP
time; drawing E is negligible) and shares each draw across the examples of a call; flipout would
decorrelate the examples at the same forward cost but needs a custom LoRA layer.

Example:
    bayes = BayesianLoRA.load("runs/A-tfb")
    probs = bayes.predict_proba(["The food was great."], samples=10)   # (1, K)
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dln.errors import DLNError

TFB_FILE = "tfb.json"
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


def _probs(scorer, encoded: list[list[int]], mask: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 probabilities: the scorer's log-probs renormalised in double, so rows sum to 1."""
    return torch.softmax(scorer.log_probs(encoded, mask).double(), dim=1)


class BayesianLoRA:
    """A PEFT LoRA adapter with a TFB posterior N(MAP, σ² in each low-rank subspace) over its updates.

    Args:
        model: a PEFT model in eval mode; its LoRA factors are the MAP and are left unchanged.
        scorer: the `LabelScorer` of the task (labels, prompt, template).
        sigma: the posterior's σ (0: a point mass at the MAP).
        meta: the adapter's `tfb_task.json` record.
    """

    def __init__(
        self, model, scorer, sigma: float = 0.0, meta: dict | None = None, search: dict | None = None
    ) -> None:
        self.model, self.scorer, self.sigma, self.meta = model, scorer, float(sigma), meta or {}
        self.search = search
        self.pairs = lora_pairs(model)

    @property
    def labels(self) -> list[str]:
        return self.scorer.labels

    # -- prediction --------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(
        self,
        inputs: list[str] | None = None,
        *,
        samples: int = 10,
        seed: int = 0,
        sigma: float | None = None,
        encoded: list[list[int]] | None = None,
        row_labels: list[list[str]] | None = None,
    ) -> np.ndarray:
        """(N, K) predictive probabilities over the labels, averaged over `samples` weight draws (0: MAP)."""
        if samples < 0:
            raise DLNError(f"samples must be >= 0, got {samples}")
        encoded = encoded if encoded is not None else self.scorer.encode(list(inputs or []))
        if not encoded:
            raise DLNError("nothing to predict: no inputs")
        mask = self.scorer.label_mask(row_labels, len(encoded))
        if samples == 0:
            return _probs(self.scorer, encoded, mask).numpy()
        sigma = self.sigma if sigma is None else sigma
        generator = torch.Generator().manual_seed(seed)
        total = torch.zeros(len(encoded), len(self.labels), dtype=torch.float64)
        for _ in range(samples):
            with sampled_weights(self.pairs, sigma, generator):
                total += _probs(self.scorer, encoded, mask)
        return (total / samples).numpy()

    @torch.no_grad()
    def mc_dropout_proba(
        self,
        inputs: list[str] | None = None,
        *,
        samples: int = 10,
        seed: int = 0,
        encoded: list[list[int]] | None = None,
        row_labels: list[list[str]] | None = None,
    ) -> np.ndarray:
        """The MC-dropout baseline: LoRA dropout switched on at inference, probabilities averaged."""
        from peft.tuners.lora import LoraLayer

        encoded = encoded if encoded is not None else self.scorer.encode(list(inputs or []))
        mask = self.scorer.label_mask(row_labels, len(encoded))
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        dropouts = [d for m in layers for d in m.lora_dropout.values()]
        if not any(isinstance(d, torch.nn.Dropout) and d.p > 0 for d in dropouts):
            raise DLNError("the adapter was trained without LoRA dropout; MC-dropout needs dropout > 0")
        total = torch.zeros(len(encoded), len(self.labels), dtype=torch.float64)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            try:
                for d in dropouts:
                    d.train()
                for _ in range(max(samples, 1)):
                    total += _probs(self.scorer, encoded, mask)
            finally:
                for d in dropouts:
                    d.eval()
        return (total / max(samples, 1)).numpy()

    # -- σ search ----------------------------------------------------------------------------------------
    def fit(
        self,
        anchor_inputs: list[str],
        *,
        metric: str = "acc",
        tolerance: float = 0.01,
        samples: int = 4,
        sigma_min: float = SIGMA_MIN,
        sigma_max: float = SIGMA_MAX,
        steps: int = 8,
        seed: int = 0,
        progress: bool = False,
    ) -> SigmaSearch:
        """Set σ to the largest value whose anchor-set score stays within tolerance (see the module text)."""
        if not anchor_inputs:
            raise DLNError("the anchor set is empty; give unlabelled training inputs (JSONL lines of input)")
        if samples < 1:
            raise DLNError(f"the σ search needs samples >= 1 per σ, got {samples}")
        encoded = self.scorer.encode(anchor_inputs)
        map_probs = self.predict_proba(encoded=encoded, samples=0)
        pseudo = np.argmax(map_probs, axis=1)  # the MAP's own labels

        def evaluate(sigma: float) -> AnchorScore:
            # the same seed at every σ: common random numbers
            probs = (
                map_probs
                if sigma == 0
                else self.predict_proba(encoded=encoded, samples=samples, sigma=sigma, seed=seed)
            )
            p_true = np.maximum(probs[np.arange(len(pseudo)), pseudo], 1e-12)
            score = AnchorScore(
                float(np.mean(np.argmax(probs, axis=1) == pseudo)), float(-np.mean(np.log(p_true)))
            )
            if progress:
                print(f"tfb: sigma={sigma:.3g} acc={score.accuracy:.4f} nll={score.nll:.4f}", flush=True)
            return score

        start = time.time()
        result = search_sigma(
            evaluate,
            metric=metric,
            tolerance=tolerance,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            steps=steps,
        )
        self.sigma = result.sigma
        self.search = {
            **asdict(result),
            "anchor_size": len(anchor_inputs),
            "samples": samples,
            "seed": seed,
            "seconds": time.time() - start,
        }
        return result

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, out: str | Path) -> Path:
        """The MAP adapter (PEFT files, unchanged), its tfb_task.json, and tfb.json with σ and the recipe."""
        from reasoning.tfb_train import save_adapter

        out = Path(out)
        save_adapter(self.model, out, self.meta)
        record = {
            "sigma": self.sigma,
            "recipe": "svd of s*B per LoRA pair; A <- V^T A + (sigma/d) Z; "
            "B <- U diag(d)/s (recomputed from the saved MAP factors at load)",
            "layers": [p.name for p in self.pairs],
            "search": self.search,
        }
        (out / TFB_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, directory: str | Path, *, base=None, tokenizer=None) -> BayesianLoRA:
        """One call: an adapter directory (with tfb.json: its σ; a plain MAP adapter: σ = 0)."""
        from reasoning.tfb_train import load_adapter

        model, scorer, meta = load_adapter(directory, base=base, tokenizer=tokenizer)
        path = Path(directory) / TFB_FILE
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"sigma": 0.0}
        return cls(model, scorer, record["sigma"], meta, record.get("search"))
