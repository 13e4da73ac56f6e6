"""One DLN-2 iteration: variational inference over the hidden layer's text h.

With x the input, y the gold label, π1 the hidden layer's prompt and π2 the output layer's:

    h_k ~ q(h | x, y), k = 1..K          (the hidden layer's prompt with the answer as a hint)
    log w_k = log p(y | x, h_k; π2) + log p(h_k | x; π1) - log q(h_k | x, y)
    w̄ = softmax(log w / T)                (posterior weights over the K samples, `dln.vi`)
    π2 <- argmax_π Σ_i Σ_k w̄_ik log p(y_i | x_i, h_ik; π)
    π1 <- argmax_π Σ_i Σ_k w̄_ik log p(h_ik | x_i; π) - λ |Δ mean log p(h | x)|   (λ: trust region)

The step reports the ELBO mean_k log w_k, the multi-sample bound log mean_k w_k and the effective sample
size of w̄, averaged over the minibatch.
"""

from __future__ import annotations

import numpy as np
import torch

from dln import vi
from dln.backward import Example
from dln.dln1 import (
    Batch,
    propose,
    rank_prompts,
    select_best,
    split_for_ranking,
    split_outcomes,
    split_rows,
)
from dln.layers import LanguageLayer
from dln.lm.base import LanguageModel
from dln.scoring import gold_logprobs, label_logprobs, predictions
from dln.train_config import TrainConfig

POSTERIOR_TEMPLATE = "{{ prompt }}\n\n{{ input }}\n\nThe correct answer is: {{ target }}."


def sample_posterior(
    hidden: LanguageLayer, model: LanguageModel, batch: Batch, config: TrainConfig, seed: int
) -> tuple[list[str], list[tuple[int, ...]], np.ndarray]:
    """K hidden texts per example from q(h | x, y): their text, exact token ids and log q; flattened
    example-major (B*K).

    log q is the density of the ids drawn under the distribution that drew them (`hidden_temperature`,
    end token included), from the backend's `sample`; scoring the decoded text again at T = 1 would weight
    the samples of one distribution by the density of another (the bias this replaces). The text passed on
    to the output layer is stripped ("(empty)" for nothing): a deterministic function of h, which leaves the
    weights exact.
    """
    posterior = LanguageLayer(prompt=hidden.prompt, template=POSTERIOR_TEMPLATE, chat=hidden.chat)
    contexts = [posterior.render(x, target=y) for x, y in zip(batch.inputs, batch.targets)]
    samples = model.sample(
        contexts,
        n=config.num_hidden_samples,
        temperature=config.hidden_temperature,
        max_tokens=config.hidden_max_tokens,
        seed=seed,
    )
    flat = [s for row in samples for s in row]
    texts = [s.text.strip() or "(empty)" for s in flat]
    return texts, [s.token_ids for s in flat], np.array([s.logprob for s in flat], dtype=np.float64)


def repeat(batch: Batch, k: int) -> Batch:
    return Batch(
        [x for x in batch.inputs for _ in range(k)],
        [t for t in batch.targets for _ in range(k)],
        [ls for ls in batch.label_sets for _ in range(k)],
    )


def weighted_objective(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_k w̄_ik v_ik averaged over examples; values (P, B*K), weights (B, K) -> (P,)."""
    return (values.reshape(values.shape[0], *weights.shape) * weights).sum(axis=2).mean(axis=1)


def log_weights(log_p_y, log_p_h, log_q, ids, kind: str = "exact") -> np.ndarray:
    """log w = log p(y | x, h) + log p(h | x) - log q(h | x, y) (`exact`: the ELBO and the multi-sample
    bound are bounds on log p(y | x)); `per_token` divides the h terms by h's token count, as the
    reference code does: it keeps a 48-token log p(h | x) from swamping log p(y | x, h), which would make
    the weights an argmax (ESS ~ 1), but it is a heuristic and the logged bounds are then not bounds."""
    if kind == "per_token":
        lengths = np.array([max(1, len(t)) for t in ids], dtype=np.float64)
        return log_p_y + (log_p_h - log_q) / lengths
    return log_p_y + log_p_h - log_q


def posterior_terms(
    hidden: LanguageLayer,
    output: LanguageLayer,
    model: LanguageModel,
    batch: Batch,
    config: TrainConfig,
    seed: int,
):
    """The three terms of log w for K samples per example, flattened example-major (B*K): the hidden texts,
    their token ids, the output layer's label log-prob rows, log p(y | x, h), log p(h | x) and log q."""
    texts, ids, log_q = sample_posterior(hidden, model, batch, config, seed)
    flat = repeat(batch, config.num_hidden_samples)
    log_p_h = hidden.log_p_ids(model, flat.inputs, ids)
    (rows,) = label_logprobs(output, model, [output.prompt], flat.inputs, flat.label_sets, texts)
    log_p_y = gold_logprobs([rows], flat.targets, flat.label_sets)[0]
    return texts, ids, rows, log_p_y, log_p_h, log_q


def dln2_step(
    hidden: LanguageLayer,
    output: LanguageLayer,
    model: LanguageModel,
    backward: LanguageModel,
    batch: Batch,
    config: TrainConfig,
    labels: list[str],
    seed: int,
    memory: list[str] | None = None,
) -> dict:
    """Update both layers' prompts in place; return the iteration's metrics.

    `output_ranking` picks π2's update: `posterior` (the paper's variational step, `update_output`) or
    `forward` (`update_output_forward`: DLN-1's search on the program's own forward pass; `memory` holds
    the best earlier output prompts on dev); `hidden_ranking` picks π1's the same way (`update_hidden`,
    `update_hidden_forward`)."""
    k = config.num_hidden_samples
    texts, ids, rows, log_p_y, log_p_h, log_q = posterior_terms(hidden, output, model, batch, config, seed)
    log_w = torch.tensor(log_weights(log_p_y, log_p_h, log_q, ids, config.hidden_weights))
    log_w = log_w.reshape(len(batch.inputs), k)  # (B, K)
    weights = vi.normalized_weights(log_w, temperature=config.posterior_temperature).numpy()
    metrics = weight_metrics(log_w, texts)

    best_k = weights.argmax(axis=1)
    best_hidden = [texts[i * k + j] for i, j in enumerate(best_k)]
    predicted = [
        labs[int(np.argmax(rows[i * k + j]))] for i, (j, labs) in enumerate(zip(best_k, batch.label_sets))
    ]
    if config.output_ranking == "forward":
        scores2, best2, train_accuracy = update_output_forward(
            hidden, output, model, backward, batch, config, labels, seed, memory
        )
    else:
        train_accuracy = float(np.mean([p == t for p, t in zip(predicted, batch.targets)]))
        posterior = (best_hidden, predicted, log_p_y, weights, texts)
        scores2, best2 = update_output(output, model, backward, batch, config, labels, seed, *posterior)
    shown = [Example(x, h) for x, h in zip(batch.inputs, best_hidden)]
    if config.hidden_ranking == "forward":
        scores1, best1 = update_hidden_forward(hidden, output, model, backward, batch, config, seed, shown)
    else:
        scores1, best1 = update_hidden(
            hidden, model, backward, batch, config, seed, shown[:4], log_p_h, weights, ids
        )
    metrics.update(
        {
            "objective": scores2[best2],
            "objective_before": scores2[0],
            "hidden_objective": scores1[best1],
            "train_accuracy_before": train_accuracy,
            "prompt_changed": best2 != 0 or best1 != 0,
        }
    )
    return metrics


def weight_metrics(log_w: torch.Tensor, texts: list[str]) -> dict:
    """The iteration's bounds and effective sample size from log-weights (B, K): ELBO = mean log w,
    IW bound = log mean exp log w, ESS = (Σ w)² / Σ w² (near 1 when one hidden text takes all the weight)."""
    ess = vi.effective_sample_size(log_w)
    return {
        "elbo": float(vi.elbo(log_w).mean()),
        "iw_bound": float(vi.iw_bound(log_w).mean()),
        "ess": float(ess.mean()),
        "ess_min": float(ess.min()),
        "ess_max": float(ess.max()),
        "hidden_length": float(np.mean([len(t.split()) for t in texts])),
    }


def update_output(
    output, model, backward, batch, config, labels, seed, best_hidden, predicted, log_p_y, weights, texts
) -> tuple[list[float], int]:
    """π2: candidates see the minibatch with its most probable hidden text; each is scored by the
    posterior-weighted log p(y | x, h) over all K hidden texts. Returns (scores, index of the best)."""
    flat = repeat(batch, config.num_hidden_samples)
    successes, errors = split_outcomes(batch, predicted, best_hidden)
    proposals = propose(backward, config, output.prompt, successes, errors, labels, seed)
    scores = weighted_objective(log_p_y[None, :], weights).tolist()
    if proposals:
        per = label_logprobs(output, model, proposals, flat.inputs, flat.label_sets, texts)
        scores += weighted_objective(gold_logprobs(per, flat.targets, flat.label_sets), weights).tolist()
    best = int(np.argmax(scores))
    output.prompt = ([output.prompt] + proposals)[best]
    return scores, best


def update_output_forward(
    hidden, output, model, backward, batch, config, labels, seed, memory
) -> tuple[list[float], int, float]:
    """π2 by DLN-1's search (`rank_prompts`) on the program as it answers: h = the hidden layer's greedy text
    from x alone, the text the program sees at inference. The proposals are written from the successes and
    errors of that forward pass, as the reference code does; the candidates (current, remembered, proposed)
    are ranked by `select_by` on the held-out half with `held_out_ranking`. The posterior's samples, which
    saw y, still train π1: they are what π1 should make likely. Why: ranked on q's samples, π2 learns to read
    hidden texts that carry the answer, and at test time no hidden text does (measured: benchmarks/README).
    Returns (mean log p(gold) per candidate, index of the best, the forward pass's accuracy it wrote from)."""
    propose_half, rank_half = split_for_ranking(batch, config.held_out_ranking)
    forward_hidden = hidden.write(model, batch.inputs, config.hidden_max_tokens)
    hidden_propose, hidden_rank = split_rows(forward_hidden, rank_half is not propose_half)
    current = output.prompt
    (rows,) = label_logprobs(
        output, model, [current], propose_half.inputs, propose_half.label_sets, hidden_propose
    )
    predicted = predictions(rows, propose_half.label_sets)
    successes, errors = split_outcomes(propose_half, predicted, hidden_propose)
    proposals = propose(backward, config, current, successes, errors, labels, seed)
    remembered = [m for m in (memory or []) if m != current and m not in proposals]
    candidates = [current] + remembered + proposals
    known = rows if rank_half is propose_half else None
    best, loglik, _ = rank_prompts(
        output, model, candidates, rank_half, config.select_by, hidden=hidden_rank, known=known
    )
    output.prompt = candidates[best]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, propose_half.targets)]))
    return loglik.tolist(), best, accuracy


def update_hidden(
    hidden, model, backward, batch, config, seed, shown, log_p_h, weights, ids
) -> tuple[list[float], int]:
    """π1: candidates should make the posterior's good hidden texts likely from x alone: the weighted
    log p(h | x) minus `logp_penalty` x its drift from the current prompt's (a trust region)."""
    flat = repeat(batch, config.num_hidden_samples)
    proposals = propose(backward, config, hidden.prompt, shown, [], [], seed + 1)
    scores = weighted_objective(log_p_h[None, :], weights).tolist()
    for prompt in proposals:
        candidate_log_p = hidden.log_p_ids(model, flat.inputs, ids, prompt=prompt)
        drift = abs(float(candidate_log_p.mean() - log_p_h.mean()))
        scores.append(
            float(weighted_objective(candidate_log_p[None, :], weights)[0]) - config.logp_penalty * drift
        )
    best = int(np.argmax(scores))
    hidden.prompt = ([hidden.prompt] + proposals)[best]
    return scores, best


def update_hidden_forward(
    hidden, output, model, backward, batch, config, seed, shown
) -> tuple[list[float], int]:
    """π1 by the program's own result: each candidate (current, proposed) writes its greedy hidden text for
    the ranking examples, the current output prompt answers from it, and `select_by` picks (accuracy with
    the log-likelihood as the tie-break, or the mean log p(gold | x, h)); `held_out_ranking` writes the
    proposals from one half of the minibatch (shown with q's best hidden text) and ranks on the other.
    Why: on the default model log p(y | x, h) hardly depends on h, so the posterior step's objective is
    almost only log p(h | x), which rewards prompts whose text is likely, not useful (benchmarks/README).
    Returns (mean log p(gold) per candidate, index of the best)."""
    held_out = config.held_out_ranking and len(batch.inputs) > 1
    _, rank_half = split_for_ranking(batch, held_out)
    examples = split_rows(shown, held_out)[0][:4]
    proposals = propose(backward, config, hidden.prompt, examples, [], [], seed + 1)
    candidates = [hidden.prompt] + [p for p in dict.fromkeys(proposals) if p != hidden.prompt]
    per_example = []
    for prompt in candidates:
        texts = hidden.write(model, rank_half.inputs, config.hidden_max_tokens, prompt=prompt)
        (rows,) = label_logprobs(
            output, model, [output.prompt], rank_half.inputs, rank_half.label_sets, texts
        )
        per_example.append(rows)
    best, loglik, _ = select_best(per_example, rank_half, config.select_by)
    hidden.prompt = candidates[best]
    return loglik.tolist(), best
