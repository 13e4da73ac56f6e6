"""The Best-of-N maths: the BoN distribution's density, the vBoN log-ratio, the reward CDF, BoN weights.

Notation (DESIGN.md section 4): a prompt x, a completion y, the reference policy π_ref, a reward r(x, y)
and its CDF under the reference policy, F(r) = P_{y' ~ π_ref}(r(x, y') < r).

**The BoN density.** Draw y_1..y_N ~ π_ref independently and return the one with the largest reward.
Assume distinct completions have distinct rewards. The output is y exactly when i >= 1 of the N draws
are y and the other N - i all have a smaller reward; the i positions can be chosen in C(N, i) ways, each
draw equals y with probability π_ref(y|x) and falls below r(x, y) with probability F(r(x, y)). So

    π_BoN(y|x) = Σ_{i=1..N} C(N, i) F(r(x,y))^{N-i} π_ref(y|x)^i  =  (F + π_ref)^N - F^N.

**vBoN.** Fitting π_θ by the backward KL, KL(π_θ || π_BoN), is RL:

    -KL(π_θ || π_BoN) = E_θ[log π_BoN(y|x) - log π_ref(y|x)] - KL(π_θ || π_ref).

For a long sequence π_ref(y|x) is tiny against F, so the i = 1 term dominates:
log π_BoN(y|x) - log π_ref(y|x) ≈ log N + (N - 1) log F(r(x, y)). Dividing by N - 1 gives the first-order
vBoN objective: maximise E_θ[log F(r(x, y))] - 1/(N-1) KL(π_θ || π_ref), RL with reward log F and KL
coefficient 1/(N-1). `vbon_log_ratio` gives the exact form of the reward term as an option.

**The CDF.** F is estimated per prompt from M reference samples with rewards r_1..r_M as the add-one-smoothed
empirical CDF F̂(r) = (#{j : r_j < r} + 1) / (M + 1), so log F̂ is finite (>= -log(M + 1)) and in (-inf, 0].
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

import torch


# -- the BoN distribution ---------------------------------------------------------------------------------
def bon_log_density(log_pi: torch.Tensor, log_cdf: torch.Tensor, n: int) -> torch.Tensor:
    """log π_BoN(y|x) = log Σ_{i=1..N} C(N,i) F^{N-i} π^i, elementwise, stable for tiny π (log-sum-exp)."""
    terms = _bon_terms(log_pi, log_cdf, n, power_offset=0)
    return torch.logsumexp(terms, dim=-1)


def vbon_log_ratio(log_pi: torch.Tensor, log_cdf: torch.Tensor, n: int) -> torch.Tensor:
    """log π_BoN(y|x) - log π_ref(y|x) = log Σ_i C(N,i) F^{N-i} π^{i-1}: the exact vBoN reward term."""
    return torch.logsumexp(_bon_terms(log_pi, log_cdf, n, power_offset=1), dim=-1)


def vbon_first_order(log_cdf: torch.Tensor, n: int) -> torch.Tensor:
    """log N + (N-1) log F: the first-order form of `vbon_log_ratio` (exact as π_ref(y|x) -> 0)."""
    return math.log(n) + (n - 1) * log_cdf


def _bon_terms(log_pi: torch.Tensor, log_cdf: torch.Tensor, n: int, power_offset: int) -> torch.Tensor:
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    i = torch.arange(1, n + 1, dtype=torch.float64)  # (N,)
    log_binom = torch.tensor([math.log(math.comb(n, k)) for k in range(1, n + 1)], dtype=torch.float64)
    log_pi = log_pi.double().unsqueeze(-1)
    log_cdf = log_cdf.double().unsqueeze(-1)
    # F^{N-i} with F = 0 and i = N is 0^0 = 1: keep those terms finite
    cdf_part = torch.where(i == n, torch.zeros_like(log_cdf), (n - i) * log_cdf)
    return log_binom + cdf_part + (i - power_offset) * log_pi  # (..., N)


# -- the reward CDF under the reference policy ----------------------------------------------------------
def smoothed_log_cdf(reference_rewards: Sequence[float], rewards: Sequence[float]) -> list[float]:
    """log F̂(r) = log((#{j: r_j < r} + 1) / (M + 1)) of each r against M reference rewards."""
    ordered = sorted(float(r) for r in reference_rewards)
    m = len(ordered)
    if m == 0:
        raise ValueError("the CDF needs at least one reference reward")
    return [math.log((bisect_left(ordered, float(r)) + 1) / (m + 1)) for r in rewards]


# -- Best-of-N with sorted samples: expectations over every N-subset ---------------------------------------
def best_of_n_weights(m: int, n: int) -> list[float]:
    """P(the j-th smallest of m samples is the max of a uniformly random n-subset), j = 1..m.

    With m >= n samples of one prompt, Σ_j w_j f(sorted_j) is the unbiased estimate of E[f(BoN_n output)]
    from all C(m, n) subsets at once: the j-th smallest is the max exactly when the other n-1 come from
    the j-1 below it, C(j-1, n-1) / C(m, n).
    """
    if not 1 <= n <= m:
        raise ValueError(f"need 1 <= n <= m, got n={n}, m={m}")
    total = math.comb(m, n)
    return [math.comb(j - 1, n - 1) / total for j in range(1, m + 1)]
