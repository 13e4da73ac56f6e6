"""Every estimator of `reasoning.reason.losses` against exact enumeration on a discrete toy model.

Toy: a latent trace z ∈ {0..Z-1}, π_θ(z | x) = softmax(a), π_θ(y | x, z) = sigmoid(b_z) for the observed
y, q_φ(z | x, y) = softmax(φ). Then log π(y | x) = logsumexp_z(log π(z|x) + log π(y|x,z)) is exact, and an
expectation over K iid traces is a sum over the Z^K tuples weighted by Π_k q(z_k).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dln.vi import iw_bound
from reasoning.reason.losses import (
    ElboThetaLoss,
    ForwardKLPosteriorLoss,
    GRPOLoss,
    MultiTraceThetaLoss,
    ReverseKLPosteriorLoss,
    RFTLoss,
    SFTLoss,
    bound_metrics,
    grpo_advantages,
    rft_weights,
    sequence_logprob,
)

Z = 3


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons at 1e-10 need double precision; restore the default for the other test files."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def toy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(Z, generator=g, dtype=torch.float64).requires_grad_()
    b = (2 * torch.randn(Z, generator=g, dtype=torch.float64)).requires_grad_()
    phi = torch.randn(Z, generator=g, dtype=torch.float64).requires_grad_()
    return a, b, phi


def log_joint_table(a, b):
    return torch.log_softmax(a, 0) + torch.nn.functional.logsigmoid(b)  # (Z,) log π(z, y | x)


def tuples(k: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(Z), repeat=k)))  # (Z^K, K)


def expect(k: int, log_q_table, fn):
    """Σ over all K-tuples of Π q(z_k) · fn(tuple indices (N, K)) (fn returns (N,) or (N, ...))."""
    idx = tuples(k)
    prob = log_q_table.detach()[idx].sum(-1).exp()  # (N,)
    values = fn(idx)
    return (prob.reshape(-1, *([1] * (values.ndim - 1))) * values).sum(0)


def test_bounds_ordered_and_rise_with_k_to_log_p():
    a, b, phi = toy()
    lj, lq = log_joint_table(a, b).detach(), torch.log_softmax(phi, 0).detach()
    log_p = torch.logsumexp(lj, 0).item()
    exact_elbo = (lq.exp() * (lj - lq)).sum().item()
    bounds = [expect(k, lq, lambda idx: iw_bound(lj[idx] - lq[idx])).item() for k in range(1, 8)]
    assert bounds[0] == pytest.approx(exact_elbo, abs=1e-12)  # E[L_1] = ELBO
    assert exact_elbo < bounds[1] and bounds[-1] < log_p
    assert all(x <= y + 1e-12 for x, y in zip(bounds, bounds[1:]))  # monotone in K
    assert log_p - bounds[-1] < 0.35 * (log_p - bounds[0])  # closing the gap


def test_exact_posterior_makes_every_bound_tight():
    a, b, _ = toy(1)
    lj = log_joint_table(a, b).detach()
    posterior = lj - torch.logsumexp(lj, 0)
    values = iw_bound(lj[tuples(3)] - posterior[tuples(3)])
    assert torch.allclose(values, torch.logsumexp(lj, 0).expand_as(values))


@pytest.mark.parametrize("k", [1, 2, 4])
def test_self_normalised_gradient_is_the_exact_gradient_of_the_bound(k):
    a, b, phi = toy(2)
    lq = torch.log_softmax(phi, 0).detach()
    # exact: ∇_θ E_q[L_K] by autograd through the enumeration (q does not depend on θ)
    exact = torch.autograd.grad(
        expect(k, lq, lambda idx: iw_bound(log_joint_table(a, b)[idx] - lq[idx])), (a, b)
    )
    # estimator: E over tuples of -∇ MultiTraceThetaLoss on that one tuple (B = 1)
    loss = MultiTraceThetaLoss()

    def per_tuple(idx):
        grads = []
        for row in idx:
            lj = log_joint_table(a, b)[row][None]  # (1, K)
            ga, gb = torch.autograd.grad(-loss(lj, lq[row][None]).loss, (a, b))
            grads.append(torch.cat([ga, gb]))
        return torch.stack(grads)

    estimated = expect(k, lq, per_tuple)
    assert torch.allclose(estimated, torch.cat(exact), atol=1e-10)


def test_self_normalised_gradient_tends_to_grad_log_p_as_k_grows():
    a, b, phi = toy(3)
    lq = torch.log_softmax(phi, 0).detach()
    target = torch.cat(torch.autograd.grad(torch.logsumexp(log_joint_table(a, b), 0), (a, b)))
    errors = []
    for k in (1, 2, 4, 7):
        grad_k = torch.cat(
            torch.autograd.grad(
                expect(k, lq, lambda idx: iw_bound(log_joint_table(a, b)[idx] - lq[idx])), (a, b)
            )
        )
        errors.append((grad_k - target).norm().item())
    assert all(x > y for x, y in zip(errors, errors[1:]))
    assert errors[-1] < 0.3 * errors[0]


def test_forward_kl_posterior_gradient_tends_to_the_exact_kl_gradient():
    a, b, phi = toy(4)
    lj = log_joint_table(a, b).detach()
    posterior = (lj - torch.logsumexp(lj, 0)).exp()
    exact = torch.autograd.grad((posterior * (posterior.log() - torch.log_softmax(phi, 0))).sum(), phi)[0]
    loss = ForwardKLPosteriorLoss()
    errors = []
    for k in (1, 2, 4, 7):

        def per_tuple(idx):
            out = []
            for row in idx:
                lq = torch.log_softmax(phi, 0)[row][None]
                out.append(torch.autograd.grad(loss(lj[row][None], lq).loss, phi)[0])
            return torch.stack(out)

        errors.append((expect(k, torch.log_softmax(phi, 0), per_tuple) - exact).norm().item())
    assert all(x > y for x, y in zip(errors, errors[1:]))
    assert errors[-1] < 0.3 * errors[0]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_reverse_kl_score_function_is_unbiased_for_the_elbo_gradient(k):
    a, b, phi = toy(5)
    lj = log_joint_table(a, b).detach()
    lq_fn = lambda: torch.log_softmax(phi, 0)  # noqa: E731
    exact = torch.autograd.grad((lq_fn().exp() * (lj - lq_fn())).sum(), phi)[0]  # ∇_φ ELBO(φ)
    loss = ReverseKLPosteriorLoss()
    batch = 2 if k == 1 else 1  # with K = 1 the baseline comes from the other question of the batch

    def per_tuple(idx):
        out = []
        for row in idx:
            rows = row.reshape(batch, -1)  # (B, K)
            out.append(-torch.autograd.grad(loss(lj[rows], lq_fn()[rows]).loss, phi)[0])
        return torch.stack(out)

    estimated = expect(k * batch, lq_fn(), per_tuple)
    assert torch.allclose(estimated, exact, atol=1e-10)


def test_elbo_theta_loss_is_sft_on_posterior_traces_and_reports_the_bounds():
    lj = torch.tensor([[-2.0, -3.0]], requires_grad=True)
    lq = torch.tensor([[-1.0, -1.0]])
    out = ElboThetaLoss()(lj, lq)
    assert out.loss.item() == pytest.approx(2.5)
    assert out.metrics["elbo"] == pytest.approx(-1.5)
    assert out.metrics["bound"] == pytest.approx(math.log((math.exp(-1) + math.exp(-2)) / 2))
    w = [math.exp(-1.0), math.exp(-2.0)]  # log w = log p - log q
    assert out.metrics["ess"] == pytest.approx(sum(w) ** 2 / sum(x * x for x in w))
    assert bound_metrics(torch.zeros(3, 4))["ess"] == pytest.approx(4.0)


def test_rft_is_accuracy_weighted_local_forward_kl_and_debias_removes_the_weight():
    # π(z) = softmax(a) over Z traces, c(z) = 1 for z in {0}: A = π(0), ∇ log A = ∇ log π(0).
    a = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    c_table = torch.tensor([1.0, 0.0, 0.0])
    log_pi = torch.log_softmax(a, 0)
    acc = log_pi[0].exp()
    grad_log_a = torch.autograd.grad(log_pi[0], a, retain_graph=True)[0]
    for debias in (False, True):
        loss = RFTLoss(debias)
        for k in (1, 3):

            def per_tuple(idx, loss=loss):
                out = []
                for row in idx:
                    lp = torch.log_softmax(a, 0)[row][None]
                    out.append(-torch.autograd.grad(loss(lp, c_table[row][None]).loss, a)[0])
                return torch.stack(out)

            got = expect(k, log_pi, per_tuple)
            factor = acc if not debias else 1 - (1 - acc) ** k  # A(x), or P(n_c >= 1)
            assert torch.allclose(got, factor.detach() * grad_log_a, atol=1e-10)


def test_grpo_advantages_and_weights_by_hand():
    c = torch.tensor([[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    adv = grpo_advantages(c)
    assert adv[0].tolist() == pytest.approx([1, -1, -1, 1], abs=1e-3)
    assert adv[2].abs().sum() == 0  # no signal from a question nobody answered
    debiased = grpo_advantages(c, debias=True)
    assert debiased[1].tolist() == pytest.approx([3.0, -1.0, -1.0, -1.0])  # K c_k / n_c - 1
    assert rft_weights(c)[1].tolist() == [0.25, 0, 0, 0]
    assert rft_weights(c, debias=True)[0].tolist() == [0.5, 0, 0, 0.5]
    lp = torch.zeros(3, 4, requires_grad=True)
    GRPOLoss()(lp, c).loss.backward()
    assert torch.allclose(lp.grad, -adv / 12)


def test_sft_and_length_normalisation():
    lj = torch.tensor([-4.0, -6.0])
    assert SFTLoss()(lj).loss.item() == pytest.approx(5.0)
    assert sequence_logprob(lj, torch.tensor([2, 3])).tolist() == [-4.0, -6.0]
    assert sequence_logprob(lj, torch.tensor([2, 3]), per_token=True).tolist() == [-2.0, -2.0]
    with pytest.raises(ValueError, match="lengths"):
        sequence_logprob(lj, per_token=True)
