"""Reward against KL(π || π_ref) on held-out prompts: the reference, Best-of-N, and trained policies.

- A trained policy π_θ: k samples per prompt; reward = their mean; KL by Monte Carlo,
  mean of log π_θ(y|x) - log π_ref(y|x) over its own samples (exact sequence log-probs).
- Best-of-N for every N <= m at once from m reference samples per prompt: the expectation over all
  C(m, N) subsets (`best_of_n_weights`) of the best sample's reward, and of its log-ratio
  log π_BoN(y|x) - log π_ref(y|x) ≈ log N + (N-1) log F(r) (the first-order form, exact as π_ref(y|x) -> 0).
  log F of a sample is estimated from its rank among the m: with a below it strictly, F(r) of the
  (a+1)-th smallest of m draws is Beta(a+1, m-a) distributed, so E[log F] = ψ(a+1) - ψ(m+1) (ψ: digamma).
  For distinct rewards this reproduces the closed form log N - (N-1)/N (shown next to it) exactly; ties in
  the reward (VADER gives many neutral texts 0.0) lower F and the KL, and the Monte Carlo value shows it.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_left
from dataclasses import dataclass

import torch

from reasoning.bon.density import best_of_n_weights, vbon_first_order
from reasoning.bon.rewards import RewardFn
from reasoning.bon.trainer import sample_rewards
from reasoning.finetune.policy import Policy


@dataclass
class RewardKL:
    """One point of the reward-KL plane."""

    name: str
    reward: float
    kl: float
    kl_closed_form: float | None = None
    samples: int = 0

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def evaluate_reference_bon(
    policy: Policy,
    prompts: list[str],
    reward: RewardFn,
    config,
    m: int = 16,
    ns: tuple[int, ...] = (1, 2, 4, 8, 16),
    seed: int = 1234,
) -> list[RewardKL]:
    """The reference (N = 1) and BoN-N points, from m reference samples per prompt."""
    _, _, rewards = sample_rewards(policy, None, prompts, reward, m, config, seed=seed)
    points = []
    for n in ns:
        weights = best_of_n_weights(m, n)
        reward_means, log_ratios = [], []
        for group in rewards:
            ordered = sorted(group)
            reward_means.append(sum(w * r for w, r in zip(weights, ordered)))
            ratio = vbon_first_order(expected_log_cdf(ordered), n).tolist() if n > 1 else [0.0] * m
            log_ratios.append(sum(w * r for w, r in zip(weights, ratio)))
        points.append(
            RewardKL(
                "reference" if n == 1 else f"BoN N={n}",
                statistics.mean(reward_means),
                statistics.mean(log_ratios),
                math.log(n) - (n - 1) / n,
                m * len(prompts),
            )
        )
    return points


def expected_log_cdf(ordered: list[float]) -> torch.Tensor:
    """E[log F(r_j)] of each of m sorted rewards from its rank: ψ(a_j + 1) - ψ(m + 1), a_j = #{r < r_j}."""
    m = len(ordered)
    below = torch.tensor([bisect_left(ordered, r) for r in ordered], dtype=torch.float64)
    return torch.digamma(below + 1) - torch.digamma(torch.tensor(m + 1.0, dtype=torch.float64))


def evaluate_policy(
    policy: Policy,
    adapter: str,
    name: str,
    prompts: list[str],
    reward: RewardFn,
    config,
    k: int = 4,
    seed: int = 4321,
) -> RewardKL:
    """Mean reward of k samples per prompt from `adapter`, and the Monte Carlo KL to the reference."""
    prompt_ids, samples, rewards = sample_rewards(policy, adapter, prompts, reward, k, config, seed=seed)
    flat_prompts = [ids for ids in prompt_ids for _ in range(k)]
    flat = [c for group in samples for c in group]
    with torch.no_grad():
        with policy.use(adapter):
            log_policy = _chunked_logprobs(policy, flat_prompts, flat)
        with policy.use(None):
            log_ref = _chunked_logprobs(policy, flat_prompts, flat)
    return RewardKL(
        name,
        statistics.mean(r for group in rewards for r in group),
        (log_policy - log_ref).mean().item(),
        None,
        len(flat),
    )


def _chunked_logprobs(policy: Policy, prompts: list, completions: list, size: int = 32) -> torch.Tensor:
    return torch.cat(
        [
            policy.logprobs(prompts[i : i + size], completions[i : i + size], exact=True)
            for i in range(0, len(prompts), size)
        ]
    )
