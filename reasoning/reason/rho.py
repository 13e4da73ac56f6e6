"""The offline recipe's trace weights ρ and the final policy's data (Variational Reasoning for Language
Models, arXiv:2509.22637, section 3; `reasoning.reason.recipe` runs the stages).

For a question x with answer y and K traces z_k ~ q_φ(z | x, y) (the answer-hinted SFT posterior), under
the SFT policy π_θ0:

    ρ_k = π̂_θ0(y | x, z_k) · r_k,     r_k = π_θ0(z_k | x) / q_φ(z_k | x, y)

π̂_θ0(y | x, z) (`rho_estimator`):
    likelihood   π_θ0(y | x, z), the exact probability of the y-part `Answer: y` + EOS
    gml          exp((1/|y|) Σ_t log π_θ0(y_t | x, z, y_<t)), its geometric mean per token
    acc          (1/M) Σ_m 1[continuation m of π_θ0 after (x, z) is correct], M = `acc_samples`
log r_k (`rho_ratio`):
    exact        Σ_t log π_θ0(z_t | ...) - Σ_t log q_φ(z_t | ...)         (an importance ratio)
    normalized   the same divided by |z|, per-token means (the paper's released code; not a ratio of
                 densities, but it keeps long traces from dominating)

log q is scored under the distribution the traces were sampled from (temperature, top_p). A trace with
ρ = 0 (acc: no correct continuation; `check_working`: a wrong equation in its working) is never chosen.
With `check_working` the acc continuations of a trace with wrong working are not drawn (its ρ is 0 either
way; on word_chain that is about 80 % of q's traces and of the weights stage's sampling): its term has
acc None and `skipped` True, and a final stage without the check refuses such weights.
The final data (`final_data`):
    mix          every gold trace, plus each question's top-ρ trace (the paper's "mix" data)
    weighted     every gold trace, plus each question's traces with w̃_k = ρ_k / Σ_j ρ_j (weighted SFT)
    paired       the mix data grouped by question: one row holds a question's gold trace and its top-ρ
                 trace (weight 1 each), so with full gold and a fixed number of updates the final π sees
                 exactly the gold rows SFT sees, plus q's trace of each (mix spends about half of the
                 updates' rows on q's traces)
"""

from __future__ import annotations

import math
import time

import torch

from dln.errors import DLNError
from reasoning.reason.tasks import answer_suffix, is_correct, policy_prompt, posterior_prompt
from reasoning.reason.working import working_is_right

ACC_MAX_NEW_TOKENS = 16  # the acc estimator's continuations: `Answer: N` and a little slack
SCORE_BATCH = 16  # sequences per scoring pass


@torch.no_grad()
def score_traces(
    policy,
    ids,
    rows: list[dict],
    traces: list[list[list[int]]],
    config,
    seed: int,
    timings: dict | None = None,
) -> list:
    """The terms of ρ for every trace of `rows` (K lists of trace ids each), one dict per trace.

    Args:
        policy: a `Policy` with adapters `prior` (π_θ0) and `posterior` (q_φ).
        ids: the `CompletionIds` of its tokenizer (the y-part appended to a trace).
        rows: questions with their answers.
        traces: per row, its K traces as token ids (cut before `Answer`, as sampled from q).
        config: a `ReasonConfig` (temperature, top_p of q's sampling; acc_samples).
        seed: seeds the acc estimator's continuations.
        timings: when given, its "sampling" entry grows by the seconds spent sampling them.

    Returns:
        Per row, per trace: {"log_prior_z", "log_q_z", "z_len", "log_y", "y_len", "acc", "skipped"} (acc
        None when acc_samples is 0, or when `check_working` skipped the trace: `skipped` True).
    """
    x = policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
    hints = policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
    flat = [(b, z) for b, group in enumerate(traces) for z in group]
    texts = [policy.decode(z) for _, z in flat]  # decoded once: the answer suffix and the working check
    joints = [z + ids.continuation(answer_suffix(t, rows[b]["answer"])) for (b, z), t in zip(flat, texts)]
    out = []
    for start in range(0, len(flat), SCORE_BATCH):  # (N, T, V) logits: a few sequences at a time
        part, joint = flat[start : start + SCORE_BATCH], joints[start : start + SCORE_BATCH]
        with policy.use("prior"):
            token_logp, _ = policy.logprobs([x[b] for b, _ in part], joint, per_token=True)  # (n, T)
        with policy.use("posterior"):
            log_q = policy.logprobs(
                [hints[b] for b, _ in part], [z for _, z in part], temperature=config.temperature,
                top_p=config.top_p,
            )  # fmt: skip
        for i, (_, z) in enumerate(part):
            out.append(
                {
                    "log_prior_z": token_logp[i, : len(z)].sum().item(),
                    "log_q_z": log_q[i].item(),
                    "z_len": len(z),
                    "log_y": token_logp[i, len(z) : len(joint[i])].sum().item(),
                    "y_len": len(joint[i]) - len(z),
                }
            )
    _add_acc_terms(policy, x, rows, flat, texts, out, config, seed, timings)
    k = len(traces[0]) if traces else 0
    return [out[b * k : (b + 1) * k] for b in range(len(traces))]


def _add_acc_terms(policy, x, rows, flat, texts, out: list[dict], config, seed: int, timings) -> None:
    """Set "acc" and "skipped" on each term of `out` (one per (row, trace) of `flat`, decoded as `texts`).

    With `check_working`, a trace whose working is wrong gets no continuations: its ρ is 0 whatever acc says.
    """
    skipped = [bool(config.check_working) and working_is_right(text) is False for text in texts]
    start = time.perf_counter()
    if config.acc_samples:
        drawn = [item for item, skip in zip(flat, skipped) if not skip]
        accs = iter(_accuracy(policy, x, rows, drawn, config.acc_samples, seed) if drawn else [])
    if timings is not None:
        timings["sampling"] = timings.get("sampling", 0.0) + time.perf_counter() - start
    for term, skip in zip(out, skipped):
        term["acc"] = None if not config.acc_samples or skip else next(accs)
        term["skipped"] = skip


def _accuracy(policy, x, rows, flat, m: int, seed: int) -> list[float]:
    """acc: the fraction of m continuations of π_θ0 after (x, z) that answer correctly."""
    with policy.use("prior"):
        samples = policy.sample(
            [x[b] + z for b, z in flat], n=m, max_new_tokens=ACC_MAX_NEW_TOKENS, temperature=1.0, seed=seed
        )
    return [
        sum(is_correct(policy.decode(c), rows[b]["answer"]) for c in group) / m
        for (b, _), group in zip(flat, samples)
    ]


def log_rho(term: dict, estimator: str, ratio: str) -> float:
    """log ρ = log π̂_θ0(y | x, z) + log r of one trace's terms (`score_traces`); -inf when ρ = 0."""
    if not math.isfinite(term["log_q_z"]):  # q rescored a sampled token outside its nucleus (numerics)
        return -math.inf
    log_r = term["log_prior_z"] - term["log_q_z"]
    if ratio == "normalized":
        log_r /= max(term["z_len"], 1)
    if estimator == "likelihood":
        log_y = term["log_y"]
    elif estimator == "gml":
        log_y = term["log_y"] / max(term["y_len"], 1)
    else:
        log_y = math.log(term["acc"]) if term["acc"] else -math.inf
    return log_y + log_r


def final_rows(
    rows: list[dict], texts: list[list[str]], terms: list[list[dict]], config
) -> tuple[list, dict]:
    """The final π's training rows (gold traces + weighted q-traces) and the statistics of the weights.

    Args:
        rows: the training questions (trace "" when a question has no gold trace).
        texts: per question, its K traces as text.
        terms: per question, `score_traces`'s terms of each trace.
        config: `rho_estimator`, `rho_ratio`, `final_data`, `check_working`.
    """
    if not config.check_working and any(t.get("skipped") for group in terms for t in group):
        raise DLNError(
            "these weights were computed with check_working: true, which draws no acc continuations for "
            "traces with wrong working; a final stage without the check needs its own run directory"
        )
    paired = config.final_data == "paired"
    data = [] if paired else [r for r in rows if r["trace"]]
    kept, ess, lengths, reach, wrong = 0, [], [], 0, 0
    for r, group, group_terms in zip(rows, texts, terms):
        log_w = torch.tensor(
            [log_rho(t, config.rho_estimator, config.rho_ratio) for t in group_terms], dtype=torch.float64
        )
        if config.check_working:  # a trace with a wrong equation gets ρ = 0
            bad = torch.tensor([working_is_right(text) is False for text in group])
            wrong += int(bad.sum())
            log_w = log_w.masked_fill(bad, -math.inf)
        if not torch.isfinite(log_w).any():
            data += [r] if paired and r["trace"] else []  # every ρ_k = 0: only the gold trace, if any
            continue
        kept += 1
        weights = torch.softmax(log_w, 0)  # ρ_k / Σ_j ρ_j
        ess.append(1.0 / (weights**2).sum().item())
        best = int(weights.argmax())
        lengths.append(group_terms[best]["z_len"])
        reach += is_correct(group[best], r["answer"], strict=False)  # the trace's own last number is y
        row = {"question": r["question"], "answer": r["answer"], "trace": group[best]}
        if config.final_data == "weighted":
            row.update(traces=list(group), weights=weights.tolist())
        elif paired and r["trace"]:
            row.update(trace=r["trace"], traces=[r["trace"], group[best]], weights=[1.0, 1.0])
        data.append(row)
    stats = {
        "questions": len(rows),
        "gold_rows": sum(1 for r in rows if r["trace"]),
        "with_trace": kept,
        "ess": sum(ess) / len(ess) if ess else 0.0,
        "chosen_trace_len": sum(lengths) / len(lengths) if lengths else 0.0,
        "chosen_reaches_answer": reach / kept if kept else 0.0,
        "wrong_working": wrong,  # traces given ρ = 0 by check_working
    }
    return data, stats
