"""Estimators on importance log-weights: ELBO, IW bound, self-normalised weights, ESS.

Every latent in this project (a prompt π, a hidden layer's text h, a thinking trace z) is handled the
same way: draw K candidates z_1..z_K ~ q(z | x), score them with the model p, and form the log-weights

    log w_k = log p(x, z_k) - log q(z_k | x),        k = 1..K    (the last dim of every tensor here)

so that w_k is an unbiased estimate of p(x) = Σ_z p(x, z). The functions below turn a tensor of
log-weights of shape (..., K) into everything the trainers need. They are pure, differentiable,
batched over any leading dims (a batch of questions B, of layers, ...) and keep the maths defined when
some log-weights are -inf (a candidate the model gives probability zero):

    elbo                    (1/K) Σ_k log w_k                          ELBO estimate, lower bound on log p(x)
    iw_bound                log (1/K) Σ_k w_k                          IWAE bound, ELBO <= E[.] <= log p(x)
    log_mean_exp            log (1/K) Σ_k exp a_k, stable              the primitive behind iw_bound
    normalized_weights      w_k / Σ_j w_j (softmax of log w / T)       forward-KL / IWAE gradient weights
    effective_sample_size   (Σ w)² / Σ w²                              how many samples the weights use
    dln2_posterior_weights  softmax(log p(y|x,h) + log p(h|x) - log q(h|x,y))   DLN-2's weights on h̃_k
    accuracy_weighted       1[c_k] w_k / Σ_j 1[c_j] w_j                RFT/GRPO without the accuracy bias

Example:
    >>> import torch
    >>> log_w = torch.tensor([[0.0, 0.0], [-1.0, float("-inf")]], dtype=torch.float64)  # (B=2, K=2)
    >>> iw_bound(log_w)  # log((1 + 1) / 2), log((e^-1 + 0) / 2)
    tensor([ 0.0000, -1.6931], dtype=torch.float64)
    >>> normalized_weights(log_w)
    tensor([[0.5000, 0.5000],
            [1.0000, 0.0000]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "accuracy_weighted",
    "dln2_posterior_weights",
    "effective_sample_size",
    "elbo",
    "iw_bound",
    "log_mean_exp",
    "normalized_weights",
]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _num_samples(x: torch.Tensor, dim: int = -1) -> int:
    """K, the size of the sample dim; a clear error where there are no samples to average."""
    if x.ndim == 0:
        raise ValueError("expected log-weights of shape (..., K) with K >= 1 samples, got a 0-dim tensor")
    k = x.shape[dim]
    if k == 0:
        raise ValueError(
            f"cannot estimate from K=0 samples (log-weights of shape {tuple(x.shape)}, sample dim {dim}); "
            "draw at least one sample per input"
        )
    return k


def _all_neg_inf(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Rows whose every weight is zero: (..., 1) mask, so results there can be set without NaN."""
    return (x == -math.inf).all(dim=dim, keepdim=True)


def _check_temperature(temperature: float) -> None:
    if not 0.0 < temperature < math.inf:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def log_mean_exp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """Numerically safe log of the mean of exponentials.

        log_mean_exp(a) = log (1/K) Σ_k exp(a_k) = logsumexp(a) - log K

    computed by shifting by the max (no overflow at a_k = ±1e4, typical of sequence log-probs). A slice
    where every a_k = -inf gives -inf (the mean of zeros is zero) with a zero gradient instead of NaN.

    Args:
        x: values a, of shape (..., K, ...) with K >= 1 along `dim`.
        dim: the dim to average over.
        keepdim: keep `dim` with size 1.

    Returns:
        x reduced over `dim`.

    Raises:
        ValueError: if x has no samples along `dim` (K = 0).
    """
    x = _as_float(x)
    k = _num_samples(x, dim)
    dead = _all_neg_inf(x, dim)  # (..., 1, ...)
    # Filling dead slices with 0 keeps logsumexp's backward (exp(a - lse)) away from -inf - -inf = NaN.
    lse = torch.logsumexp(x.masked_fill(dead, 0.0), dim=dim, keepdim=True)
    out = (lse - math.log(k)).masked_fill(dead, -math.inf)
    return out if keepdim else out.squeeze(dim)


def elbo(log_w: torch.Tensor) -> torch.Tensor:
    """Monte Carlo ELBO: the mean log-weight.

        elbo = (1/K) Σ_k log w_k
        E_q[elbo] = E_q[log p(x, z) - log q(z | x)] = log p(x) - KL(q(z|x) || p(z|x))

    Unbiased for the ELBO whatever K is; K only lowers its variance. A sample with w_k = 0 makes it -inf
    (the ELBO of a q that puts mass where p has none is -inf).

    Args:
        log_w: log-weights of shape (..., K).

    Returns:
        (...,) the ELBO estimate per input.

    Raises:
        ValueError: if K = 0.
    """
    log_w = _as_float(log_w)
    _num_samples(log_w)
    return log_w.mean(dim=-1)


def iw_bound(log_w: torch.Tensor) -> torch.Tensor:
    """Importance-weighted (IWAE, multi-sample) bound on log p(x).

        L_K = log (1/K) Σ_k w_k = logsumexp_k(log w_k) - log K

    With z_1..z_K iid ~ q(z|x): E[L_1] = ELBO <= E[L_K] <= E[L_{K+1}] <= log p(x), E[L_K] -> log p(x) as
    K -> ∞ (the gap shrinks like Var_q(w / p(x)) / (2K)), and L_K = log p(x) for every draw when
    q(z|x) = p(z|x). This is the variational-reasoning paper's multi-trace objective. Its gradient in
    the log-weights is `normalized_weights(log_w)`: ∂L_K / ∂log w_k = w̄_k.

    Args:
        log_w: log-weights of shape (..., K).

    Returns:
        (...,) the bound per input; -inf where every w_k = 0.

    Raises:
        ValueError: if K = 0.
    """
    return log_mean_exp(log_w, dim=-1)


def normalized_weights(log_w: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Self-normalised importance weights.

        w̄_k = w_k^(1/T) / Σ_j w_j^(1/T) = softmax_k(log w_k / T)

    At T = 1, Σ_k w̄_k f(z_k) estimates E_{p(z|x)}[f(z)] (consistent as K -> ∞, exact for every K when
    q = p(z|x)). These are also the forward-KL weights, so there is no separate `forward_kl_weights`:
    the gradient of KL(p(z|x) || q_φ(z|x)) is -E_{p(z|x)}[∇_φ log q_φ(z|x)] ≈ -Σ_k w̄_k ∇_φ log q_φ(z_k|x),
    and the IWAE gradient is ∇_θ L_K = Σ_k w̄_k ∇_θ log w_k. Detach them when used as coefficients.
    T > 1 flattens the weights (more samples used, more bias), T < 1 sharpens them towards the argmax.
    A row where every w_k = 0 gets all-zero weights (it contributes nothing to a weighted loss) instead
    of 0/0 = NaN.

    Args:
        log_w: log-weights of shape (..., K).
        temperature: T > 0.

    Returns:
        (..., K) weights, each row summing to 1 (or 0 for an all-zero row).

    Raises:
        ValueError: if K = 0 or T is not a finite number > 0.
    """
    _check_temperature(temperature)
    log_w = _as_float(log_w)
    _num_samples(log_w)
    dead = _all_neg_inf(log_w)  # (..., 1)
    w = torch.softmax(log_w.masked_fill(dead, 0.0) / temperature, dim=-1)  # (..., K)
    return w.masked_fill(dead, 0.0)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size of the importance weights, computed in log space.

        ESS = (Σ_k w_k)² / Σ_k w_k² = 1 / Σ_k w̄_k² = exp(2 logsumexp(log w) - logsumexp(2 log w))

    ESS = K for equal weights and 1 when one weight carries everything; 1 <= ESS <= K otherwise. It is
    invariant to scaling all w_k, so log-weights of -1e4 are fine. A row where every w_k = 0 has no
    usable sample and gets ESS = 0.

    Args:
        log_w: log-weights of shape (..., K).

    Returns:
        (...,) the effective number of samples per input.

    Raises:
        ValueError: if K = 0.
    """
    log_w = _as_float(log_w)
    _num_samples(log_w)
    dead = _all_neg_inf(log_w)  # (..., 1)
    a = log_w.masked_fill(dead, 0.0)  # (..., K)
    log_ess = 2.0 * torch.logsumexp(a, dim=-1) - torch.logsumexp(2.0 * a, dim=-1)  # (...,)
    return log_ess.exp().masked_fill(dead.squeeze(-1), 0.0)


def dln2_posterior_weights(
    log_p_y_given_xh: torch.Tensor,
    log_p_h_given_x: torch.Tensor,
    log_q_h_given_xy: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """DLN-2's posterior weights on the K hidden samples h̃_k ~ q(h | x, y).

        α_k = softmax_k((log p(y | x, h̃_k) + log p(h̃_k | x) - log q(h̃_k | x, y)) / T)

    i.e. `normalized_weights` of the log-weights log w_k = log p(y, h̃_k | x) - log q(h̃_k | x, y), which
    approximate the true posterior p(h | x, y) ∝ p(y | x, h) p(h | x) on the samples. π2 then maximises
    Σ_k α_k log p(y | x, h̃_k), π1 maximises Σ_k α_k log p(h̃_k | x), and `elbo` of the same log-weights
    is the ELBO to report. Two exact cases: if the h̃_k are the whole support once each and q is uniform,
    α_k = p(h̃_k | x, y); if each h appears K·q(h | x, y) times, Σ_{k: h̃_k = h} α_k = p(h | x, y).
    The h̃_k are drawn from q, so log q(h̃_k | x, y) > -inf.

    Args:
        log_p_y_given_xh: (..., K) log p(y | x, h̃_k) from layer 2.
        log_p_h_given_x: (..., K) log p(h̃_k | x) from layer 1.
        log_q_h_given_xy: (..., K) log q(h̃_k | x, y) from the answer-conditioned proposal.
        temperature: T > 0 (see `normalized_weights`).

    Returns:
        (..., K) weights summing to 1 per input (0 if every sample has p(y, h̃_k | x) = 0).

    Raises:
        ValueError: if K = 0 or T is not a finite number > 0.
    """
    log_w = _as_float(log_p_y_given_xh) + _as_float(log_p_h_given_x) - _as_float(log_q_h_given_xy)
    return normalized_weights(log_w, temperature=temperature)


def accuracy_weighted(correct: torch.Tensor, log_w: torch.Tensor | None = None) -> torch.Tensor:
    """Bias-free weights on K answered samples: each question counts once, whatever its accuracy.

    Variational reasoning (Zhou et al., 2025) reads binary-reward fine-tuning as a local forward KL.
    With c(z) = 1[trace z reaches a correct answer] and accuracy A(x) = π(c = 1 | x) = Σ_z π(z|x) c(z),
    the posterior over traces given a correct answer is π(z | x, c=1) = π(z|x) c(z) / A(x), so

        RFT:   E_{z~π}[c(z) ∇ log π(z|x)] = A(x) · E_{π(z|x,c=1)}[∇ log π(z|x)] = A(x) · ∇ log A(x)
        GRPO:  advantages (c - A)/sqrt(A(1-A)) give, in expectation, sqrt(A / (1 - A)) · ∇ log A(x)

    where E_{π(z|x,c=1)}[∇ log π] = ∇ log A is the gradient of the local forward-KL objective. Both
    multiply it by a factor that grows with A(x): easy questions get more weight. Removing the factor
    means dividing by the estimated accuracy Â = n_c / K (n_c = Σ_j c_j), i.e. the RFT weight c_k / K
    becomes c_k / (K Â) = c_k / n_c, so the weights of every question with a correct sample sum to 1:

        a_k = c_k w_k / Σ_j c_j w_j = softmax_k(log w_k + log c_k)

    With on-policy samples (log_w None, all w_k equal) this is a_k = c_k / n_c, and Σ_k a_k ∇ log π(z_k|x)
    is, given n_c >= 1, unbiased for ∇ log A(x), the maximum-marginal-likelihood gradient. With traces
    from another proposal q (e.g. the answer-hinted posterior), pass log_w_k = log π(z_k|x) - log q(z_k|x, y)
    and a_k self-normalises the importance weights of the correct samples towards π(z | x, c=1). A
    question with no correct sample (n_c = 0, Â = 0) gives all-zero weights: it is skipped, not NaN.
    The paper's accuracy-based IWAE weights ρ_k ∝ Â(z_k) π(z_k|x) / q(z_k|x,y), where Â(z_k) is the
    accuracy of answers sampled after trace z_k, are `normalized_weights(log Â(z_k) + log_w_k)` (its
    released code uses the per-token mean of log π - log q in place of their sum).

    Args:
        correct: (..., K) correctness indicators c_k, booleans or 0/1 numbers.
        log_w: optional (..., K) log-weights log π(z_k|x) - log q(z_k|x, y); None for samples from π.

    Returns:
        (..., K) weights a_k, summing to 1 per question with n_c >= 1 and to 0 otherwise.

    Raises:
        ValueError: if K = 0, `correct` holds values other than 0/1, or shapes do not broadcast.

    Example:
        >>> accuracy_weighted(torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0]]))  # Â = 1/2 and 1/4
        tensor([[0.5000, 0.0000, 0.5000, 0.0000],
                [1.0000, 0.0000, 0.0000, 0.0000]])
    """
    correct = torch.as_tensor(correct)
    if correct.dtype != torch.bool:
        if not ((correct == 0) | (correct == 1)).all():
            raise ValueError("correct must hold booleans or 0/1 values (one indicator per sample)")
        correct = correct != 0
    _num_samples(correct)
    if log_w is None:
        log_w = torch.zeros(correct.shape, dtype=torch.get_default_dtype(), device=correct.device)
    log_w = _as_float(log_w)
    try:
        log_w, correct = torch.broadcast_tensors(log_w, correct)
    except RuntimeError as e:
        raise ValueError(
            f"correct {tuple(correct.shape)} and log_w {tuple(log_w.shape)} do not broadcast"
        ) from e
    return normalized_weights(log_w.masked_fill(~correct, -math.inf))
