"""The objectives of variational reasoning as small losses on sequence log-probs (DESIGN.md section 4).

Notation. A question x, a thinking trace z, an answer y. The policy (prior) is π_θ(z, y | x) =
π_θ(z | x) π_θ(y | x, z); the posterior q_φ(z | x, y) is the same base model prompted with the answer as
a hint. For a question b and K traces z_1..z_K (from q for the variational objectives, from π for RFT and
GRPO) the trainer hands these losses tensors of shape (B, K):

    log_joint[b, k] = log π_θ(z_k, y | x)       exact sum of token log-probs of trace + `Answer: y` (grad θ)
    log_q[b, k]     = log q_φ(z_k | x, y)       exact sum of token log-probs of the trace          (grad φ)
    log w_k         = log_joint - log_q          importance log-weights (`dln.vi`)

and the estimators come from `dln.vi`:

    ELBO       (1/K) Σ_k log w_k                  <= log π(y | x)
    L_K        log (1/K) Σ_k w_k                  ELBO <= E[L_K] <= log π(y | x), rising with K
    w̃_k        w_k / Σ_j w_j                      self-normalised weights
    ESS        1 / Σ_k w̃_k²

Every loss is a quantity to *minimise*; weights and baselines are detached so each loss's gradient is the
estimator written in its docstring.

Length normalisation. By default every log-prob is the exact token sum, so log w is a true importance
weight and the bounds are bounds. `per_token=True` (the public reference implementation's choice) divides
each sequence's log-prob by its token count first (`sequence_logprob`): log w_k becomes a difference of
per-token means, which tames the weights of long traces but is no longer a bound on log π(y | x).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dln.vi import accuracy_weighted, effective_sample_size, elbo, iw_bound, normalized_weights

__all__ = [
    "ElboThetaLoss",
    "ForwardKLPosteriorLoss",
    "GRPOLoss",
    "LossOutput",
    "MultiTraceThetaLoss",
    "RFTLoss",
    "ReverseKLPosteriorLoss",
    "SFTLoss",
    "bound_metrics",
    "grpo_advantages",
    "rft_weights",
    "sequence_logprob",
]


@dataclass
class LossOutput:
    """A scalar loss to minimise and the per-step numbers to log (plain floats)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def sequence_logprob(token_sum: torch.Tensor, lengths: torch.Tensor | None = None, per_token: bool = False):
    """log p(sequence) = Σ_t log p(token_t | ...) by default; Σ_t / T when `per_token` (length-normalised).

    Args:
        token_sum: (...,) summed token log-probs.
        lengths: (...,) token counts T (required when per_token).
        per_token: divide by T (not a log-probability any more; see the module docstring).
    """
    if not per_token:
        return token_sum
    if lengths is None:
        raise ValueError("per_token=True needs the sequence lengths")
    return token_sum / lengths.clamp(min=1).to(token_sum.dtype)


def bound_metrics(log_w: torch.Tensor) -> dict[str, float]:
    """ELBO, multi-trace bound L_K and ESS of (B, K) log-weights, averaged over questions."""
    log_w = log_w.detach().double()
    return {
        "elbo": elbo(log_w).mean().item(),
        "bound": iw_bound(log_w).mean().item(),
        "ess": effective_sample_size(log_w).mean().item(),
    }


class ElboThetaLoss(nn.Module):
    """θ's ELBO term, traces from q:

        ELBO(θ) = E_{q(z|x,y)}[log π_θ(z | x) + log π_θ(y | x, z)] + H(q)
        loss    = -(1/BK) Σ_{b,k} log π_θ(z_k, y | x)          (H(q) does not depend on θ)

    i.e. SFT of π on posterior traces, each weighted 1/K whatever its importance weight.
    """

    def forward(self, log_joint: torch.Tensor, log_q: torch.Tensor) -> LossOutput:
        log_w = log_joint.detach() - log_q.detach()  # (B, K)
        return LossOutput(-log_joint.mean(), bound_metrics(log_w))


class MultiTraceThetaLoss(nn.Module):
    """θ's multi-trace (IWAE) bound, K traces from q:

        L_K(θ)  = log (1/K) Σ_k π_θ(z_k, y | x) / q(z_k | x, y)
        ∇_θ L_K = Σ_k w̃_k ∇_θ log π_θ(z_k, y | x),     w̃ = softmax_k(log w_k)
        loss    = -(1/B) Σ_b Σ_k sg(w̃_bk) log π_θ(z_bk, y_b | x_b)

    As K grows, Σ_k w̃_k ∇ log π(z_k, y | x) -> E_{π(z|x,y)}[∇ log π(z, y | x)] = ∇ log π(y | x).

    Args:
        temperature: T of the weights softmax(log w / T) (1 = the bound's exact gradient).
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, log_joint: torch.Tensor, log_q: torch.Tensor) -> LossOutput:
        log_w = log_joint.detach() - log_q.detach()  # (B, K)
        weights = normalized_weights(log_w.double(), self.temperature).to(log_joint.dtype)  # (B, K)
        loss = -(weights * log_joint).sum(-1).mean()
        return LossOutput(loss, bound_metrics(log_w))


class ReverseKLPosteriorLoss(nn.Module):
    """φ by the ELBO (reverse KL(q || π(z|x,y))), score-function gradient with a baseline:

        ∇_φ ELBO = E_q[(log w - b) ∇_φ log q_φ(z | x, y)],     log w = log π(z, y | x) - log q_φ(z | x, y)
        loss     = -(1/BK) Σ_{b,k} sg(log w_bk - b_bk) log q_φ(z_bk | x_b, y_b)

    (the pathwise term -E_q[∇ log q] is zero in expectation and dropped). The baseline b_bk never uses
    sample (b, k) itself, so the estimator stays unbiased: the leave-one-out mean of the other K-1
    log-weights of the same question when K > 1; when K = 1, the mean log-weight of the other questions
    of the batch (0 for a batch of one).
    """

    def forward(self, log_joint: torch.Tensor, log_q: torch.Tensor) -> LossOutput:
        log_w = (log_joint.detach() - log_q.detach()).double()  # (B, K)
        b, k = log_w.shape
        if k > 1:
            baseline = (log_w.sum(-1, keepdim=True) - log_w) / (k - 1)  # (B, K) leave-one-out
        elif b > 1:
            baseline = (log_w.sum() - log_w) / (b - 1)  # (B, 1) other questions
        else:
            baseline = torch.zeros_like(log_w)
        advantage = (log_w - baseline).to(log_q.dtype)
        return LossOutput(
            -(advantage * log_q).mean(), {"posterior_advantage_abs": advantage.abs().mean().item()}
        )


class ForwardKLPosteriorLoss(nn.Module):
    """φ by the forward KL(π(z | x, y) || q_φ(z | x, y)), with the multi-trace weights:

        ∇_φ KL = -E_{π(z|x,y)}[∇_φ log q_φ(z | x, y)] ≈ -Σ_k w̃_k ∇_φ log q_φ(z_k | x, y)
        loss   = -(1/B) Σ_b Σ_k sg(w̃_bk) log q_φ(z_bk | x_b, y_b)

    a weighted SFT of q on its own traces, the variational-reasoning paper's stable choice for q.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, log_joint: torch.Tensor, log_q: torch.Tensor) -> LossOutput:
        log_w = (log_joint.detach() - log_q.detach()).double()
        weights = normalized_weights(log_w, self.temperature).to(log_q.dtype)  # (B, K)
        return LossOutput(-(weights * log_q).sum(-1).mean(), {})


class SFTLoss(nn.Module):
    """SFT on gold (or weighted) traces, N completions of B questions with weights c (default 1):

        loss = -(1/B) Σ_n c_n log π_θ(z_n, y_n | x_n)      (N = B, c = 1: plain SFT, -mean log π)

    The offline recipe's weighted multi-trace data gives a question K traces with self-normalised weights
    (Σ_k c_k = 1), so every question counts once whatever its K.
    """

    def forward(
        self, log_joint: torch.Tensor, weights: torch.Tensor | None = None, questions: int | None = None
    ) -> LossOutput:
        weights = torch.ones_like(log_joint) if weights is None else weights.to(log_joint.dtype)
        questions = questions or log_joint.shape[0]
        nll = -(weights * log_joint.detach()).sum() / weights.sum()
        return LossOutput(-(weights * log_joint).sum() / questions, {"nll": nll.item()})


def rft_weights(correct: torch.Tensor, debias: bool = False) -> torch.Tensor:
    """RFT's weights on K traces sampled from π, c_k = 1[trace k answers correctly]:

        a_k = c_k / K            (default: SFT on the correct samples)
        a_k = c_k / n_c          (debias: `dln.vi.accuracy_weighted`)

    With a_k = c_k / K, E[Σ_k a_k ∇ log π(z_k|x)] = A(x) ∇ log A(x): the local forward-KL gradient
    ∇ log A(x) = E_{π(z|x,c=1)}[∇ log π(z|x)] scaled by the accuracy A(x) (easy questions count more).
    Dividing by Â = n_c / K removes that factor.
    """
    correct = correct.to(torch.float64)
    if debias:
        return accuracy_weighted(correct)
    return correct / correct.shape[-1]


def grpo_advantages(correct: torch.Tensor, debias: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group advantages of K on-policy traces with a binary reward c_k:

        Â_b = (1/K) Σ_k c_bk,     A_bk = (c_bk - Â_b) / (std_b + eps)                      (default)
        A_bk = (c_bk - Â_b) / Â_b   (0 where Â_b = 0)                                      (debias)

    In expectation the default gives sqrt(A / (1 - A)) ∇ log A(x), the local forward-KL gradient scaled
    by a factor growing with accuracy. The debiased form equals `rft_weights(debias=True)`·K minus the
    baseline 1, i.e. ∇ log A(x) with a zero-mean control variate.
    """
    c = correct.to(torch.float64)  # (B, K)
    mean = c.mean(-1, keepdim=True)
    if debias:
        return torch.where(mean > 0, (c - mean) / mean.clamp(min=1e-12), torch.zeros_like(c))
    return (c - mean) / (c.std(-1, unbiased=False, keepdim=True) + eps)


class RFTLoss(nn.Module):
    """Rejection-sampling fine-tuning: loss = -(1/B) Σ_b Σ_k a_bk log π_θ(o_bk | x_b), o = trace + answer.

    Args:
        debias: remove the accuracy weighting (see `rft_weights`).
    """

    def __init__(self, debias: bool = False) -> None:
        super().__init__()
        self.debias = debias

    def forward(self, log_policy: torch.Tensor, correct: torch.Tensor) -> LossOutput:
        weights = rft_weights(correct, self.debias).to(log_policy.dtype)  # (B, K)
        return LossOutput(-(weights * log_policy).sum(-1).mean(), {"kept": float(correct.float().mean())})


class GRPOLoss(nn.Module):
    """GRPO with one update per batch of samples (so the PPO ratio is 1 and clipping is inactive):

        loss = -(1/BK) Σ_{b,k} sg(A_bk) log π_θ(o_bk | x_b)  -  β-free (no reference KL)

    With `per_token` log-probs (GRPO's usual length normalisation) each log π(o) is divided by |o|.

    Args:
        debias: remove the accuracy weighting (see `grpo_advantages`).
    """

    def __init__(self, debias: bool = False) -> None:
        super().__init__()
        self.debias = debias

    def forward(self, log_policy: torch.Tensor, correct: torch.Tensor) -> LossOutput:
        advantages = grpo_advantages(correct, self.debias).to(log_policy.dtype)  # (B, K)
        return LossOutput(
            -(advantages * log_policy).mean(), {"advantage_abs": advantages.abs().mean().item()}
        )
