"""Rewards `(prompt, completion) -> float` for Best-of-N and vBoN, and the specs that name them.

A reward spec is one string, the same in `dln bon`, the vBoN configs and `dln serve --reward NAME=SPEC`:

| spec | reward |
|---|---|
| `vader` | VADER's compound sentiment of the completion, in [-1, 1] (the `vaderSentiment` package) |
| `length` | the completion's length in characters (a trivial check: "the longest answer wins") |
| `hf-classifier:<dir>[@<label>]` | p(label | completion), a transformers classifier (default: last label) |
| `module:function`, `path/file.py:function` | any importable Python callable |
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

from dln.errors import DLNError

RewardFn = Callable[[str, str], float]
REWARD_HELP = "vader, length, hf-classifier:<model-dir>[@<label>], module:function or file.py:function"


def length_reward(prompt: str, completion: str) -> float:
    return float(len(completion))


def vader_reward() -> RewardFn:
    """VADER's compound sentiment of the completion (the prompt is not scored: only what the model wrote)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as err:
        raise DLNError("the vader reward needs vaderSentiment: pip install vaderSentiment") from err
    analyzer = SentimentIntensityAnalyzer()

    def vader(prompt: str, completion: str) -> float:
        return float(analyzer.polarity_scores(completion)["compound"])

    return vader


class ClassifierReward:
    """p(label | completion) under a transformers sequence-classification model, batched by `batch`."""

    def __init__(self, path: str, label: str | None = None, device: str = "cpu") -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise DLNError(f"hf-classifier: cannot load a sequence classifier from {path!r}") from err
        self.model.to(device).eval()
        names = self.model.config.id2label
        if label is None:
            self.index = len(names) - 1
        else:
            matches = [i for i, name in names.items() if str(name).lower() == label.lower()]
            if not matches:
                raise DLNError(f"hf-classifier: {path} has labels {list(names.values())}, not {label!r}")
            self.index = int(matches[0])

    def batch(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        import torch

        encoded = self.tokenizer(list(completions), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**encoded.to(self.model.device)).logits  # (B, labels)
        return logits.softmax(-1)[:, self.index].tolist()

    def __call__(self, prompt: str, completion: str) -> float:
        return self.batch([prompt], [completion])[0]


def score_batch(reward: RewardFn, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
    """Rewards of many pairs: one batched call when the reward offers `batch`, else one call per pair."""
    batch = getattr(reward, "batch", None)
    if batch is not None:
        return [float(r) for r in batch(prompts, completions)]
    return [float(reward(p, c)) for p, c in zip(prompts, completions)]


def load_reward(spec: str) -> RewardFn:
    """The reward a spec names (see the module table); a clear error for anything else."""
    if spec == "vader":
        return vader_reward()
    if spec == "length":
        return length_reward
    if spec.startswith("hf-classifier:"):
        path, _, label = spec.removeprefix("hf-classifier:").partition("@")
        return ClassifierReward(path, label or None)
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise DLNError(f"unknown reward {spec!r}: use {REWARD_HELP}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise DLNError(f"reward {spec!r}: no file {module_name}")
            module_spec = importlib.util.spec_from_file_location(f"dln_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise DLNError(f"reward {spec!r}: cannot import {module_name} ({err})") from err
    function = getattr(module, attr, None)
    if not callable(function):
        raise DLNError(f"reward {spec!r}: {module_name} has no function {attr}")
    return function
