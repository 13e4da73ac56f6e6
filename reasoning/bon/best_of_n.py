"""Best-of-N at inference over any `LanguageModel`: sample n completions, score them, keep the best.

The output follows π_BoN(y|x) = (F + π_ref)^N - F^N (derived in `reasoning.bon.density`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dln.lm.base import LanguageModel, Prompt
from reasoning.bon.rewards import RewardFn, score_batch


@dataclass
class BestOfN:
    """One prompt's answer: the best completion, its reward, and every candidate with its reward."""

    best: str
    reward: float
    candidates: list[str]
    rewards: list[float]


def best_of_n(
    model: LanguageModel,
    prompts: Sequence[Prompt],
    reward: RewardFn,
    n: int = 8,
    *,
    temperature: float = 1.0,
    max_tokens: int = 48,
    seed: int | None = None,
    reward_prompts: Sequence[str] | None = None,
) -> list[BestOfN]:
    """Sample n completions per prompt from any backend, score them, keep the best (ties: the first).

    Args:
        reward_prompts: the text the reward sees as each prompt (default: the prompt itself when a string).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    samples = model.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    texts = reward_prompts or [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    flat_prompts = [t for t in texts for _ in range(n)]
    flat = score_batch(reward, flat_prompts, [c for group in samples for c in group])
    results = []
    for i, group in enumerate(samples):
        rewards = flat[i * n : (i + 1) * n]
        best = max(range(n), key=lambda k: rewards[k])
        results.append(BestOfN(group[best], rewards[best], list(group), rewards))
    return results
