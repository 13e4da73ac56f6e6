"""Rewards for Best-of-N serving: `(prompt, completion) -> float`, registered by name.

A request names one with the extension field `"reward": "NAME"`; its `n` samples (or `best_of`) are scored
and the best returned, with every sample's reward in the response. Built in:

- `length`: the completion's length in characters (a trivial demo: "the longest answer wins");
- `vader`: VADER's compound sentiment of the completion, in [-1, 1], when the optional `vaderSentiment`
  package is importable (`pip install vaderSentiment`).

`--reward NAME=SPEC` adds any reward `reasoning.bon.rewards.load_reward` knows: an importable function
(`module:function`, `path/to/file.py:function`) or a transformers classifier (`hf-classifier:<dir>[@label]`).
"""

from __future__ import annotations

from dln.errors import DLNError
from reasoning.bon.rewards import RewardFn, length_reward, load_reward
from serving.errors import BadRequestError
from serving.models import parse_named

__all__ = ["RewardFn", "RewardRegistry", "length_reward", "load_reward_spec"]


def _vader_if_installed() -> RewardFn | None:
    try:
        return load_reward("vader")
    except DLNError:  # vaderSentiment is not installed: the server simply does not offer it
        return None


class RewardRegistry:
    """Name -> reward function; starts with the built-ins."""

    def __init__(self, builtins: bool = True) -> None:
        self.rewards: dict[str, RewardFn] = {}
        if builtins:
            self.rewards["length"] = length_reward
            vader = _vader_if_installed()
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
    """`NAME=SPEC` -> (NAME, reward), SPEC as `reasoning.bon.rewards.load_reward` reads it."""
    name, target = parse_named(spec, "--reward")
    try:
        return name, load_reward(target)
    except DLNError as err:
        raise DLNError(f"--reward {name}: {err}") from err
