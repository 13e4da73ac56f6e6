"""A LoRA adapter with its TFB posterior: prediction averaged over weight samples, σ fit, save and load.

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

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from dln.errors import DLNError
from reasoning.finetune.adapters import save_adapter
from reasoning.tfb.map_train import TASK_FILE, load_adapter
from reasoning.tfb.posterior import (
    SIGMA_MAX,
    SIGMA_MIN,
    AnchorScore,
    SigmaSearch,
    lora_pairs,
    sampled_weights,
    search_sigma,
)

TFB_FILE = "tfb.json"


def label_probs(scorer, encoded: list[list[int]], mask: torch.Tensor) -> torch.Tensor:
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
            return label_probs(self.scorer, encoded, mask).numpy()
        sigma = self.sigma if sigma is None else sigma
        generator = torch.Generator().manual_seed(seed)
        total = torch.zeros(len(encoded), len(self.labels), dtype=torch.float64)
        for _ in range(samples):
            with sampled_weights(self.pairs, sigma, generator):
                total += label_probs(self.scorer, encoded, mask)
        return (total / samples).numpy()

    def mc_dropout_proba(self, inputs: list[str] | None = None, **kwargs) -> np.ndarray:
        """The MC-dropout baseline on this adapter (`reasoning.tfb.baselines.mc_dropout_proba`)."""
        from reasoning.tfb.baselines import mc_dropout_proba

        return mc_dropout_proba(self, inputs, **kwargs)

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
        out = save_adapter(self.model, out, self.meta["base_model"], TASK_FILE, self.meta)
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
        model, scorer, meta = load_adapter(directory, base=base, tokenizer=tokenizer)
        path = Path(directory) / TFB_FILE
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"sigma": 0.0}
        return cls(model, scorer, record["sigma"], meta, record.get("search"))
