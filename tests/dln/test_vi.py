"""dln.vi against exact enumeration on small discrete latent-variable models.

A toy model has a latent z over n values with prior p(z), likelihood p(x | z) of the one observed x, and
a proposal q(z | x). Expectations over K iid samples from q are computed exactly, either over all
n^K ordered tuples (itertools.product, each with probability Π_k q(z_k)) or, for large K and functions
symmetric in the samples, over all multisets with their multinomial probabilities.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pytest
import torch

from dln import vi

DT = torch.float64
NEG_INF = -math.inf


@dataclass
class Toy:
    prior: torch.Tensor  # (n,) p(z)
    lik: torch.Tensor  # (n,) p(x | z) for the observed x
    q: torch.Tensor  # (n,) q(z | x)

    @property
    def joint(self) -> torch.Tensor:  # (n,) p(x, z)
        return self.prior * self.lik

    @property
    def log_px(self) -> float:
        return math.log(self.joint.sum().item())

    @property
    def post(self) -> torch.Tensor:  # (n,) p(z | x)
        return self.joint / self.joint.sum()

    @property
    def log_w(self) -> torch.Tensor:  # (n,) log p(x, z) - log q(z | x); +inf only where q = 0 (never drawn)
        return self.joint.log() - self.q.log()

    def analytic_elbo(self) -> float:
        # log p(x) - KL(q || p(z|x)), with 0 log 0 = 0
        kl = (torch.xlogy(self.q, self.q) - torch.xlogy(self.q, self.post)).sum().item()
        return self.log_px - kl


def make_toy(seed: int, n: int, proposal: str = "random") -> Toy:
    g = torch.Generator().manual_seed(seed)
    prior = torch.softmax(torch.randn(n, generator=g, dtype=DT), 0)
    lik = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=DT)
    toy = Toy(prior, lik, prior)
    if proposal == "random":
        toy.q = torch.softmax(torch.randn(n, generator=g, dtype=DT), 0)
    elif proposal == "posterior":
        toy.q = toy.post
    elif proposal == "uniform":
        toy.q = torch.full((n,), 1.0 / n, dtype=DT)
    return toy


def tuples(q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered K-tuples with positive probability under q: (M, K) indices, (M,) probabilities."""
    idx = torch.tensor(list(itertools.product(range(len(q)), repeat=k)), dtype=torch.long)  # (n^K, K)
    prob = q[idx].prod(-1)
    keep = prob > 0
    return idx[keep], prob[keep]


def multisets(q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All multisets of K draws from q as sorted (M, K) indices, with (M,) multinomial probabilities."""
    n = len(q)
    bars = torch.tensor(list(itertools.combinations(range(k + n - 1), n - 1)), dtype=torch.long)
    edges = torch.cat([torch.full((len(bars), 1), -1), bars, torch.full((len(bars), 1), k + n - 1)], 1)
    counts = (edges.diff(dim=1) - 1).to(DT)  # (M, n), stars and bars
    log_prob = math.lgamma(k + 1) - torch.lgamma(counts + 1).sum(-1) + torch.xlogy(counts, q).sum(-1)
    ends = counts.cumsum(-1).contiguous()  # (M, n): draw j is value i when ends[i-1] <= j < ends[i]
    idx = torch.searchsorted(ends, torch.arange(k, dtype=DT).expand(len(ends), k).contiguous(), right=True)
    prob = log_prob.exp()
    keep = prob > 0
    return idx[keep], prob[keep]


def expect(toy: Toy, k: int, fn, enum=tuples) -> float:
    """E over z_1..z_K iid ~ q of fn(log_w (M, K), idx (M, K)) -> (M,)."""
    idx, prob = enum(toy.q, k)
    return (prob * fn(toy.log_w[idx], idx)).sum().item()


SEEDS = [(0, 4), (1, 5), (2, 6)]


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float | None = None, atol: float | None = None):
    """assert_close with float64 tolerances near machine precision (torch.testing's costs ~1 s to load)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual, expected)
    f64 = actual.dtype == DT
    rtol = (1e-10 if f64 else 1e-5) if rtol is None else rtol
    atol = (1e-12 if f64 else 1e-6) if atol is None else atol
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), f"\n{actual}\n!=\n{expected}"


# ---------------------------------------------------------------- ELBO and the importance-weighted bound


def test_enumerators_agree():
    toy = make_toy(3, 4)
    for k in (1, 2, 3):
        assert tuples(toy.q, k)[1].sum().item() == pytest.approx(1.0, abs=1e-12)
        assert multisets(toy.q, k)[1].sum().item() == pytest.approx(1.0, abs=1e-12)
        a = expect(toy, k, lambda lw, _: vi.iw_bound(lw), tuples)
        b = expect(toy, k, lambda lw, _: vi.iw_bound(lw), multisets)
        assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("seed,n", SEEDS)
def test_expected_elbo_is_log_px_minus_kl(seed, n):
    toy = make_toy(seed, n)
    assert sum(toy.q * toy.log_w).item() == pytest.approx(toy.analytic_elbo(), rel=1e-12)
    for k in (1, 2, 3):
        assert expect(toy, k, lambda lw, _: vi.elbo(lw)) == pytest.approx(toy.analytic_elbo(), rel=1e-12)
    assert toy.analytic_elbo() < toy.log_px - 1e-6  # q is not the posterior, so the bound is strict


@pytest.mark.parametrize("seed,n", SEEDS)
def test_iw_bound_sandwich_and_monotone_in_k(seed, n):
    toy = make_toy(seed, n)
    bounds = [expect(toy, k, lambda lw, _: vi.iw_bound(lw)) for k in (1, 2, 3, 4)]
    assert bounds[0] == pytest.approx(toy.analytic_elbo(), rel=1e-12)  # L_1 = ELBO
    for lo, hi in itertools.pairwise(bounds):
        assert lo < hi  # strictly tighter with each extra sample (q != posterior)
    assert toy.analytic_elbo() <= bounds[0] + 1e-12
    assert bounds[-1] < toy.log_px


@pytest.mark.parametrize("seed,n", SEEDS)
def test_iw_bound_is_exact_when_q_is_the_posterior(seed, n):
    toy = make_toy(seed, n, "posterior")
    idx, _ = tuples(toy.q, 3)
    close(vi.iw_bound(toy.log_w[idx]), torch.full((len(idx),), toy.log_px, dtype=DT))
    for k in (1, 2, 4):
        assert expect(toy, k, lambda lw, _: vi.iw_bound(lw)) == pytest.approx(toy.log_px, rel=1e-12)
    assert toy.analytic_elbo() == pytest.approx(toy.log_px, rel=1e-12)


def test_iw_bound_exact_with_zero_likelihood_states():
    toy = make_toy(4, 5)
    toy.lik[1] = 0.0  # p(x | z=1) = 0, so p(z=1 | x) = 0
    toy.q = toy.post
    assert expect(toy, 3, lambda lw, _: vi.iw_bound(lw)) == pytest.approx(toy.log_px, rel=1e-12)
    toy.q = torch.full((5,), 0.2, dtype=DT)  # a proposal that can draw z=1: some log w_k = -inf
    assert expect(toy, 1, lambda lw, _: vi.elbo(lw)) == NEG_INF == toy.analytic_elbo()
    # L_K stays finite except on the all-z=1 tuple, so E[L_K] = -inf but never NaN
    idx, _ = tuples(toy.q, 2)
    vals = vi.iw_bound(toy.log_w[idx])
    assert not vals.isnan().any() and (vals == NEG_INF).sum().item() == 1


def test_iw_bound_gap_shrinks_like_variance_over_2k():
    # Known limit: log p(x) - E[L_K] = Var_q(w / p(x)) / (2K) + O(1/K^2), so K * gap -> Var / 2.
    toy = make_toy(7, 3)
    w_rel = (toy.log_w - toy.log_px).exp()
    half_var = (toy.q * (w_rel - 1) ** 2).sum().item() / 2
    gaps = {k: toy.log_px - expect(toy, k, lambda lw, _: vi.iw_bound(lw), multisets) for k in (4, 16, 64)}
    assert gaps[4] > gaps[16] > gaps[64] > 0
    assert 64 * gaps[64] == pytest.approx(half_var, rel=0.05)
    assert 64 * gaps[64] == pytest.approx(half_var, rel=abs(16 * gaps[16] / half_var - 1))  # converging


# ---------------------------------------------------------------- self-normalised (forward-KL) weights


def snis(f: torch.Tensor):
    return lambda lw, idx: (vi.normalized_weights(lw) * f[idx]).sum(-1)


@pytest.mark.parametrize("seed,n", SEEDS)
def test_normalized_weights_exact_when_q_is_the_posterior(seed, n):
    toy = make_toy(seed, n, "posterior")
    f = torch.arange(n, dtype=DT) ** 2
    target = (toy.post * f).sum().item()
    idx, _ = tuples(toy.q, 3)
    close(vi.normalized_weights(toy.log_w[idx]), torch.full(idx.shape, 1 / 3, dtype=DT))
    for k in (1, 2, 3, 4):
        assert expect(toy, k, snis(f)) == pytest.approx(target, rel=1e-12)


def test_normalized_weights_converge_to_posterior_expectation():
    toy = make_toy(1, 3)
    f = torch.tensor([1.0, -2.0, 3.0], dtype=DT)
    mu = (toy.post * f).sum().item()
    assert expect(toy, 1, snis(f)) == pytest.approx((toy.q * f).sum().item(), rel=1e-12)  # K=1: plain q
    bias = {k: expect(toy, k, snis(f), multisets) - mu for k in (4, 16, 64)}
    assert abs(bias[4]) > abs(bias[16]) > abs(bias[64])
    # Delta method: K * bias -> -E_q[w̃² (f - mu)] with w̃ = w / p(x), the O(1/K) bias of a ratio estimator
    w_rel = (toy.log_w - toy.log_px).exp()
    limit = -(toy.q * w_rel**2 * (f - mu)).sum().item()
    assert abs(64 * bias[64] - limit) < abs(16 * bias[16] - limit)
    assert 64 * bias[64] == pytest.approx(limit, rel=0.05)


def test_normalized_weights_are_the_iw_bound_gradient():
    log_w = torch.tensor([[0.3, -1.2, 2.0, NEG_INF], [-700.0, -701.0, -699.5, -710.0]], dtype=DT)
    log_w.requires_grad_(True)
    (grad,) = torch.autograd.grad(vi.iw_bound(log_w).sum(), log_w)
    close(grad, vi.normalized_weights(log_w.detach()))


def test_normalized_weights_temperature():
    log_w = torch.tensor([0.0, 1.0, 3.0], dtype=DT)
    hot = vi.normalized_weights(log_w, temperature=1e6)
    cold = vi.normalized_weights(log_w, temperature=1e-3)
    close(hot, torch.full((3,), 1 / 3, dtype=DT), atol=1e-6, rtol=0)
    close(cold, torch.tensor([0.0, 0.0, 1.0], dtype=DT))
    # T = 2 is the weights w^(1/2), renormalised
    sqrt_w = log_w.exp().sqrt()
    close(vi.normalized_weights(log_w, temperature=2.0), sqrt_w / sqrt_w.sum())
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            vi.normalized_weights(log_w, temperature=bad)


# ---------------------------------------------------------------- effective sample size


@pytest.mark.parametrize("k", [1, 2, 7])
def test_ess_equal_and_one_hot(k):
    for level in (0.0, -5000.0, 5000.0):
        equal = torch.full((k,), level, dtype=DT)
        assert vi.effective_sample_size(equal).item() == pytest.approx(k, rel=1e-12)
        one_hot = torch.full((k,), NEG_INF, dtype=DT)
        one_hot[k // 2] = level
        assert vi.effective_sample_size(one_hot).item() == pytest.approx(1.0, rel=1e-12)


def test_ess_matches_definition_and_is_scale_invariant():
    g = torch.Generator().manual_seed(7)
    log_w = torch.randn(5, 6, generator=g, dtype=DT) * 2
    w = log_w.exp()
    naive = w.sum(-1) ** 2 / (w**2).sum(-1)
    close(vi.effective_sample_size(log_w), naive)
    close(vi.effective_sample_size(log_w - 3000.0), naive)
    ess = vi.effective_sample_size(log_w)
    assert ((ess >= 1) & (ess <= 6)).all()
    # 1 / Σ w̄²
    close(ess, 1 / (vi.normalized_weights(log_w) ** 2).sum(-1))


# ---------------------------------------------------------------- DLN-2 posterior weights


def dln2_model(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p_h = torch.softmax(torch.randn(n, generator=g, dtype=DT), 0)  # p(h | x)
    p_y = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=DT)  # p(y | x, h) of the gold y
    post = p_h * p_y / (p_h * p_y).sum()  # p(h | x, y)
    return p_h, p_y, post


@pytest.mark.parametrize("n", [4, 6])
def test_dln2_weights_are_the_posterior_on_the_enumerated_support(n):
    # h̃_k = each h once and q uniform: log q is a constant that the softmax drops, so
    # α_k ∝ p(y|x,h_k) p(h_k|x) = p(h_k|x,y) p(y|x), i.e. α_k = p(h_k | x, y).
    p_h, p_y, post = dln2_model(n, n)
    log_q = torch.full((n,), -math.log(n), dtype=DT)
    close(vi.dln2_posterior_weights(p_y.log(), p_h.log(), log_q), post)
    # A non-uniform q over the support once each gives α ∝ p(h|x,y) / q(h|x,y) instead
    q = torch.softmax(torch.arange(n, dtype=DT), 0)
    alpha = vi.dln2_posterior_weights(p_y.log(), p_h.log(), q.log())
    close(alpha, (post / q) / (post / q).sum())
    assert not torch.allclose(alpha, post)


def test_dln2_weights_recover_the_posterior_from_a_proportional_sample():
    # K = 8 samples holding each h exactly K q(h) times: per-value sums of α_k are p(h | x, y).
    p_h, p_y, post = dln2_model(11, 4)
    q = torch.tensor([1, 1, 2, 4], dtype=DT) / 8
    h = torch.tensor([3, 0, 2, 3, 1, 3, 2, 3])  # counts 1, 1, 2, 4
    alpha = vi.dln2_posterior_weights(p_y[h].log(), p_h[h].log(), q[h].log())
    per_h = torch.zeros(4, dtype=DT).index_add_(0, h, alpha)
    close(per_h, post)


def test_dln2_expected_elbo_and_weights_against_enumeration():
    # h ~ q(h | x, y): E[elbo] = log p(y|x) - KL(q || p(h|x,y)); q = posterior makes α uniform.
    p_h, p_y, post = dln2_model(12, 5)
    toy = Toy(prior=p_h, lik=p_y, q=torch.softmax(torch.randn(5, dtype=DT), 0))
    assert expect(toy, 2, lambda lw, _: vi.elbo(lw)) == pytest.approx(toy.analytic_elbo(), rel=1e-12)
    idx, _ = tuples(post, 2)
    alpha = vi.dln2_posterior_weights(p_y[idx].log(), p_h[idx].log(), post[idx].log())
    close(alpha, torch.full(idx.shape, 0.5, dtype=DT))


# ---------------------------------------------------------------- accuracy weighting (variational reasoning)


def test_accuracy_weighted_hand_checked():
    correct = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    a = vi.accuracy_weighted(correct)
    expected = torch.tensor(
        [[0.5, 0, 0.5, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]], dtype=a.dtype
    )
    close(a, expected)
    # RFT's weights c_k / K sum to the estimated accuracy; dividing by it gives one unit per question
    rft = correct.to(a.dtype) / 4
    close(rft.sum(-1), torch.tensor([0.5, 0.25, 0.0, 1.0], dtype=a.dtype))
    close(a, torch.nan_to_num(rft / rft.sum(-1, keepdim=True)))
    # with importance weights w = (1, 3, 5): only correct samples share the mass, 1:3
    aw = vi.accuracy_weighted(
        torch.tensor([True, True, False]), torch.tensor([1.0, 3.0, 5.0], dtype=DT).log()
    )
    close(aw, torch.tensor([0.25, 0.75, 0.0], dtype=DT))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_accuracy_weighting_removes_the_accuracy_factor_exactly(k):
    # Two questions, traces z ~ π(z|x) on-policy, c(z) = 1[z reaches the right answer].
    f = torch.tensor([2.0, -1.0, 0.5, 4.0, 1.0], dtype=DT)  # a stand-in for ∇ log π(z|x)
    for seed, c in ((21, torch.tensor([1, 0, 0, 1, 0])), (22, torch.tensor([1, 1, 1, 0, 1]))):
        pi = torch.softmax(torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=DT), 0)
        acc = (pi * c).sum().item()
        target = (pi * c * f).sum().item() / acc  # E_{π(z|x,c=1)}[f]
        idx, prob = tuples(pi, k)
        rft = (c[idx] * f[idx]).mean(-1)  # (1/K) Σ c_k f(z_k)
        assert (prob * rft).sum().item() == pytest.approx(acc * target, rel=1e-12)  # the implicit A(x)
        a = vi.accuracy_weighted(c[idx], torch.zeros(idx.shape, dtype=DT))  # (M, K), on-policy in float64
        hit = c[idx].sum(-1) > 0
        p_hit = 1 - (1 - acc) ** k
        assert (prob * a.sum(-1)).sum().item() == pytest.approx(p_hit, rel=1e-12)
        est = (prob * (a * f[idx]).sum(-1))[hit].sum().item() / p_hit
        assert est == pytest.approx(target, rel=1e-12)  # no A(x) left, given one correct sample


def test_accuracy_weighted_off_policy_recovers_correct_posterior():
    # Traces from a uniform proposal, enumerating the support once: a_k = π(z_k | x, c=1).
    pi = torch.softmax(torch.randn(6, generator=torch.Generator().manual_seed(30), dtype=DT), 0)
    c = torch.tensor([0, 1, 1, 0, 1, 0])
    log_w = pi.log() - math.log(1 / 6)
    close(vi.accuracy_weighted(c, log_w), pi * c / (pi * c).sum())


def test_accuracy_weighted_validates():
    with pytest.raises(ValueError, match="0/1"):
        vi.accuracy_weighted(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="K=0"):
        vi.accuracy_weighted(torch.zeros(3, 0, dtype=torch.bool))
    with pytest.raises(ValueError, match="broadcast"):
        vi.accuracy_weighted(torch.tensor([1, 0, 1]), torch.zeros(4))


# ---------------------------------------------------------------- -inf, K = 0, batching, stability


def test_neg_inf_log_weights_are_zero_weight_samples():
    log_w = torch.tensor([NEG_INF, math.log(2.0), math.log(4.0)], dtype=DT, requires_grad=True)
    assert vi.elbo(log_w).item() == NEG_INF
    assert vi.iw_bound(log_w).item() == pytest.approx(math.log(2.0), rel=1e-12)  # (0 + 2 + 4) / 3
    close(vi.normalized_weights(log_w), torch.tensor([0, 1 / 3, 2 / 3], dtype=DT))
    assert vi.effective_sample_size(log_w).item() == pytest.approx(36 / 20, rel=1e-12)
    (g,) = torch.autograd.grad(vi.iw_bound(log_w) + vi.normalized_weights(log_w)[2], log_w)
    assert torch.isfinite(g).all()


def test_all_neg_inf_rows_give_defined_values_not_nan():
    log_w = torch.tensor([[NEG_INF, NEG_INF, NEG_INF], [0.0, 1.0, NEG_INF]], dtype=DT, requires_grad=True)
    iw, w, ess = vi.iw_bound(log_w), vi.normalized_weights(log_w), vi.effective_sample_size(log_w)
    assert iw[0].item() == NEG_INF and vi.elbo(log_w)[0].item() == NEG_INF
    close(w[0], torch.zeros(3, dtype=DT))
    assert ess[0].item() == 0.0 and ess[1].item() == pytest.approx((1 + math.e) ** 2 / (1 + math.e**2))
    assert iw[1].item() == pytest.approx(math.log((1 + math.e) / 3))
    for out in (iw.clamp_min(-1e9).sum(), w.sum(), ess.sum()):
        (g,) = torch.autograd.grad(out, log_w, retain_graph=True)
        assert not g.isnan().any()
    assert vi.log_mean_exp(torch.full((2, 3), NEG_INF), dim=0).eq(NEG_INF).all()


@pytest.mark.parametrize(
    "fn",
    [
        vi.elbo,
        vi.iw_bound,
        vi.normalized_weights,
        vi.effective_sample_size,
        vi.log_mean_exp,
        lambda x: vi.dln2_posterior_weights(x, x, x),
    ],
)
def test_zero_samples_raise(fn):
    with pytest.raises(ValueError, match="K=0"):
        fn(torch.zeros(2, 0, dtype=DT))
    with pytest.raises(ValueError, match="0-dim"):
        fn(torch.tensor(1.0, dtype=DT))


def test_batched_leading_dims_match_rows():
    g = torch.Generator().manual_seed(9)
    log_w = torch.randn(2, 3, 5, generator=g, dtype=DT)  # (B, L, K)
    log_w[0, 1, 2] = NEG_INF
    log_w[1, 2] = NEG_INF  # a whole row of zero weights
    for fn in (vi.elbo, vi.iw_bound, vi.normalized_weights, vi.effective_sample_size):
        out = fn(log_w)
        for b, j in itertools.product(range(2), range(3)):
            close(out[b, j], fn(log_w[b, j]))
    assert vi.iw_bound(torch.zeros(0, 4, dtype=DT)).shape == (0,)  # an empty batch is fine, K = 4
    # log_mean_exp over another dim, keepdim
    out = vi.log_mean_exp(log_w, dim=1, keepdim=True)
    assert out.shape == (2, 1, 5)
    close(out, vi.log_mean_exp(log_w.transpose(1, 2), dim=-1).unsqueeze(1))


def test_large_log_weights_are_stable():
    base = torch.tensor([0.0, -1.0, -3.0, 0.5], dtype=DT)
    for shift in (-5000.0, 5000.0):
        close(vi.iw_bound(base + shift), vi.iw_bound(base) + shift)
        close(vi.normalized_weights(base + shift), vi.normalized_weights(base))
        close(vi.elbo(base + shift), vi.elbo(base) + shift)
    # float32 LLM log-probs: sums of thousands of tokens
    lw32 = torch.tensor([-4000.0, -4001.0, -4100.0], dtype=torch.float32)
    assert torch.isfinite(vi.iw_bound(lw32)) and torch.isfinite(vi.normalized_weights(lw32)).all()
