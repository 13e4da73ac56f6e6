"""A Bayesianized LoRA adapter as a servable program: `dln serve --tfb NAME=runs/A-tfb[@S]`.

It keeps the program contract of `serving.models` (`predict(inputs) -> answers`, `model_uri`, `labels`), so
the server's program path answers for it. The answer to an input x is the most probable label under the TFB
predictive distribution

    p(y | x) = 1/S Σ_s p(y | x, W_s),   W_s ~ N(MAP, σ² in each LoRA subspace)   (S = 0: the MAP adapter)

and it carries p(· | x) itself: each answer is a `LabelAnswer`, a str with an `extra` dict that the server
copies into the response's choice as extension fields (`label_probs`, `samples`, `sigma`). The weight draws
are seeded per call (`seed`), so a request is answered the same way every time, and every input of a call
sees the same S weight draws (per-sample weights, `reasoning.tfb.bayesian_lora`).

Example:
    program = TFBProgram.load("runs/A-tfb", samples=10)
    program.predict(["The food was great."])[0].extra["label_probs"]   # {"good": 0.93, "bad": 0.07}
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from dln.errors import DLNError

DEFAULT_SAMPLES = 10


class LabelAnswer(str):
    """A program's answer (the label) with extension fields for its response choice in `extra`."""

    extra: dict

    def __new__(cls, label: str, extra: dict) -> LabelAnswer:
        answer = super().__new__(cls, label)
        answer.extra = extra
        return answer


class TFBProgram:
    """Serve a `BayesianLoRA`: the argmax label, with the averaged predictive distribution attached.

    Args:
        bayes: the Bayesianized adapter (its own copy of the base model: PEFT edits the modules it wraps).
        samples: S, weight samples averaged per prediction (0: the MAP adapter).
        seed: seed of the weight draws of every call.
    """

    kind = "tfb-adapter"

    def __init__(self, bayes, *, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise DLNError(f"the number of TFB samples must be an integer >= 0, got {samples!r}")
        self.bayes, self.samples, self.seed = bayes, samples, seed
        base = str(bayes.meta.get("base_model", "default"))
        self.model_uri = base if ":" in base else f"hf:{base}"
        self._lock = threading.Lock()  # sampling writes the LoRA weights in place: one call at a time

    @classmethod
    def load(cls, directory: str | Path, *, samples: int = DEFAULT_SAMPLES, seed: int = 0) -> TFBProgram:
        """The program of a `dln tfb fit` directory; the cheap checks come before the model is loaded."""
        from reasoning.tfb.bayesian_lora import TFB_FILE, BayesianLoRA

        directory = Path(directory)
        if not directory.is_dir():
            raise DLNError(
                f"no Bayesianized adapter directory at {directory}; make one with "
                f"dln tfb fit --adapter ADAPTER --out {directory}"
            )
        if not (directory / TFB_FILE).is_file():
            raise DLNError(
                f"{directory} has no {TFB_FILE}: it is not a Bayesianized adapter; "
                f"run dln tfb fit --adapter {directory} --out {directory}-tfb first"
            )
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise DLNError(f"the number of TFB samples must be an integer >= 0, got {samples!r}")
        return cls(BayesianLoRA.load(directory), samples=samples, seed=seed)

    @property
    def labels(self) -> list[str]:
        return self.bayes.labels

    @property
    def sigma(self) -> float:
        return self.bayes.sigma

    @property
    def card(self) -> dict:
        """Extra fields of this program's `/v1/models` entry."""
        return {"sigma": self.sigma, "samples": self.samples, "task": self.bayes.meta.get("task")}

    def predict_proba(self, inputs: list[str]) -> np.ndarray:
        """(N, K) predictive probabilities over `labels`, averaged over S weight samples."""
        with self._lock:
            return self.bayes.predict_proba(list(inputs), samples=self.samples, seed=self.seed)

    def predict(self, inputs: list[str]) -> list[LabelAnswer]:
        """The most probable label of every input, each carrying `label_probs`, `samples` and `sigma`."""
        if not inputs:
            return []
        probs = self.predict_proba(inputs)
        return [
            LabelAnswer(
                self.labels[int(np.argmax(row))],
                {
                    "label_probs": {y: float(p) for y, p in zip(self.labels, row, strict=True)},
                    "samples": self.samples,
                    "sigma": self.sigma,
                },
            )
            for row in probs
        ]
