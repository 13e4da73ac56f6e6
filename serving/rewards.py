"""Rewards for Best-of-N serving: `(prompt, completion) -> float`, registered by name.

A request names one with the extension field `"reward": "NAME"`; its `n` samples (or `best_of`) are scored
and the best returned, with every sample's reward in the response. Built in:

- `length`: the completion's length in characters (a trivial demo: "the longest answer wins");
- `vader`: VADER's compound sentiment of the completion, in [-1, 1], when the optional `vaderSentiment`
  package is importable (`pip install vaderSentiment`).

`--reward NAME=module:function` adds any importable function (or `NAME=path/to/file.py:function`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from dln.errors import DLNError
from serving.errors import BadRequestError
from serving.models import parse_named

RewardFn = Callable[[str, str], float]


def length_reward(prompt: str, completion: str) -> float:
    return float(len(completion))


def vader_reward() -> RewardFn | None:
    """VADER's compound sentiment of the completion, or None when vaderSentiment is not installed."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        return None
    analyzer = SentimentIntensityAnalyzer()

    def vader(prompt: str, completion: str) -> float:
        return float(analyzer.polarity_scores(completion)["compound"])

    return vader


class RewardRegistry:
    """Name -> reward function; starts with the built-ins."""

    def __init__(self, builtins: bool = True) -> None:
        self.rewards: dict[str, RewardFn] = {}
        if builtins:
            self.rewards["length"] = length_reward
            vader = vader_reward()
            if vader is not None:
                self.rewards["vader"] = vader

    def add(self, name: str, function: RewardFn) -> None:
        if not callable(function):
            raise DLNError(f"reward {name!r} is not callable")
        self.rewards[name] = function

    def get(self, name: str) -> RewardFn:
        if name not in self.rewards:
            raise BadRequestError(
                f"unknown reward {name!r}; this server has: {', '.join(self.rewards) or 'none'}",
                param="reward",
            )
        return self.rewards[name]

    def names(self) -> list[str]:
        return list(self.rewards)


def load_reward_spec(spec: str) -> tuple[str, RewardFn]:
    """`NAME=module:function` or `NAME=path/file.py:function` -> (NAME, function)."""
    name, target = parse_named(spec, "--reward")
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise DLNError(f"--reward {name}: give module:function (or file.py:function), got {target!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise DLNError(f"--reward {name}: no file {module_name}")
            spec_ = importlib.util.spec_from_file_location(f"dln_reward_{name}", path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise DLNError(f"--reward {name}: cannot import {module_name} ({err})") from err
    function = getattr(module, attr, None)
    if not callable(function):
        raise DLNError(f"--reward {name}: {module_name} has no function {attr}")
    return name, function
