"""One class per objective family: each turns micro-step `micro` into (loss, metrics to log).

Every objective draws its questions from the trainer (`ReasonTrainer.rows`, a function of the seed, the
micro-step and the process only) and scores with its exact sequence log-probs (`ReasonTrainer.logprob`);
the losses themselves live in `reasoning.reason.losses`.

    PosteriorWarmup  -log q(z*, y | x, y) on a few gold traces, q's adapter only
    SFT              -log π(z*, y | x) on the gold traces z* (weighted traces: -Σ_k c_k log π(z_k, y | x))
    OnPolicy         K completions o_k ~ π(· | x); c_k = reward(o_k) (right answer; `check_working`: and no
                     wrong equation); RFT / GRPO weights on log π(o_k | x)
    STaR             RFT, and where no sample is correct, K rationalisations o_k ~ π(· | x, y) (the answer
                     as a hint) kept when they reach y and trained as log π(o_k | x), without the hint
    Variational      K traces z_k ~ q(· | x, y); θ: ELBO or multi-trace bound; φ: reverse or forward KL
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from reasoning.reason.losses import (
    ElboThetaLoss,
    ForwardKLPosteriorLoss,
    GRPOLoss,
    MultiTraceThetaLoss,
    ReverseKLPosteriorLoss,
    RFTLoss,
    SFTLoss,
    grpo_advantages,
    rft_weights,
    sequence_logprob,
)
from reasoning.reason.tasks import (
    answer_suffix,
    format_completion,
    is_correct,
    policy_prompt,
    posterior_prompt,
)
from reasoning.reason.working import reward

if TYPE_CHECKING:
    from reasoning.reason.trainer import ReasonTrainer

Step = tuple[torch.Tensor, dict]


class Objective:
    """The loss of one micro-step, built on the trainer's policy, data draws and scoring."""

    def __init__(self, trainer: ReasonTrainer) -> None:
        self.trainer, self.config, self.policy = trainer, trainer.config, trainer.policy

    def __call__(self, micro: int) -> Step:
        raise NotImplementedError

    def gold(self, rows: list[dict]) -> list[list[int]]:
        """The gold completions `trace \\n Answer: y` + EOS of `rows`, as token ids."""
        return [self.trainer.continuation(format_completion(r["trace"], r["answer"])) for r in rows]

    def sample(self, adapter: str, prompts: list[list[int]], micro: int) -> list[list[list[int]]]:
        """K = `k` completions per prompt under `adapter`, seeded by the micro-step."""
        c = self.config
        with self.policy.use(adapter):
            return self.policy.sample(
                prompts,
                n=c.k,
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=self.trainer.sample_seed(micro),
            )


class PosteriorWarmup(Objective):
    """SFT of q on the first `posterior_warmup_examples` gold traces, the answer in its prompt."""

    def __call__(self, micro: int) -> Step:
        pool = self.trainer.gold_rows[: max(1, self.config.posterior_warmup_examples)]
        rows = self.trainer.rows(micro, pool)
        hints = self.policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
        with self.policy.use("posterior"):
            log_q = self.trainer.logprob(hints, self.gold(rows))
        return -log_q.mean(), {"posterior_nll": -log_q.detach().mean().item(), "warmup": 1.0}


class SFT(Objective):
    """loss = -(1/B) Σ_b Σ_k c_bk log π(z_bk, y_b | x_b) on gold rows (one trace, c = 1: plain SFT).

    Rows come from `trainer.gold_rows`: the training questions that have a gold trace, or the weighted
    traces of the offline recipe (`traces`, `weights` columns). With `trainer.hint` the prompt carries the
    answer, which trains the posterior q(z | x, y) instead (the recipe's q_φ).
    """

    def __call__(self, micro: int) -> Step:
        rows = self.trainer.rows(micro, self.trainer.gold_rows)
        hint = self.trainer.hint
        texts = [
            posterior_prompt(r["question"], r["answer"]) if hint else policy_prompt(r["question"])
            for r in rows
        ]
        prompts = self.policy.encode_prompts(texts)
        flat_prompts, completions, weights = [], [], []
        for r, p in zip(rows, prompts):
            for trace, weight in zip(r.get("traces") or [r["trace"]], r.get("weights") or [1.0]):
                flat_prompts.append(p)
                completions.append(self.trainer.continuation(format_completion(trace, r["answer"])))
                weights.append(weight)
        with self.policy.use("policy"):
            log_joint = self.trainer.logprob(flat_prompts, completions)
        out = SFTLoss()(log_joint, torch.tensor(weights, device=log_joint.device), len(rows))
        return out.loss, {**out.metrics, "trace_len": sum(map(len, completions)) / len(completions)}


class OnPolicy(Objective):
    """RFT / GRPO: K samples from π per question; only samples with a non-zero weight are scored."""

    def draw(self, rows: list[dict], prompts: list[list[int]], micro: int):
        """(B lists of K completions, (B, K) correctness, metrics) of K samples from π per question."""
        samples = self.sample("policy", prompts, micro)
        correct = self.correctness(rows, samples)
        return samples, correct, {"accuracy": correct.mean().item()}

    def correctness(self, rows: list[dict], samples: list[list[list[int]]]) -> torch.Tensor:
        """(B, K) rewards c_bk: the answer is right and, with `check_working`, no equation is wrong."""
        check, decode = self.config.check_working, self.policy.decode
        return torch.tensor(
            [[reward(decode(ids), r["answer"], check) for ids in g] for r, g in zip(rows, samples)],
            dtype=torch.float64,
        )  # (B, K)

    def __call__(self, micro: int) -> Step:
        c = self.config
        rows = self.trainer.rows(micro)
        prompts = self.policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
        samples, correct, metrics = self.draw(rows, prompts, micro)
        flat = [ids for group in samples for ids in group]  # (B*K) lists
        rft = c.objective in ("rft", "star")
        loss_fn = RFTLoss(c.debias) if rft else GRPOLoss(c.debias)
        coef = rft_weights(correct, c.debias) if rft else grpo_advantages(correct, c.debias)
        chosen = coef.flatten().nonzero().flatten().tolist()
        log_policy = torch.zeros(len(flat), device=self.policy.device)
        if chosen:
            with self.policy.use("policy"):
                scored = self.trainer.logprob([prompts[i // c.k] for i in chosen], [flat[i] for i in chosen])
            log_policy = log_policy.to(scored.dtype).index_put(
                (torch.tensor(chosen, device=scored.device),), scored
            )
        else:  # nothing to learn from: a zero loss that still has a graph for backward
            log_policy = log_policy + 0.0 * sum(p.sum() for p in self.policy.parameters("policy"))
        out = loss_fn(log_policy.view(len(rows), c.k), correct)
        return out.loss, {**out.metrics, **metrics, "trace_len": sum(map(len, flat)) / len(flat)}


class STaR(OnPolicy):
    """STaR (Zelikman et al., 2022) in the loop: RFT on π's own samples; for a question none of whose K
    samples is correct, K rationalisations from π with the answer as a hint (`posterior_prompt`), kept
    when they reach it and trained as completions of the question alone, log π(o | x)."""

    def draw(self, rows: list[dict], prompts: list[list[int]], micro: int):
        samples, correct, metrics = super().draw(rows, prompts, micro)  # accuracy: π's own, unhinted
        failed = [b for b in range(len(rows)) if correct[b].sum() == 0]
        if failed:
            hints = self.policy.encode_prompts(
                [posterior_prompt(rows[b]["question"], rows[b]["answer"]) for b in failed]
            )
            hinted = self.sample("policy", hints, micro + 1_000_003)
            hinted_correct = self.correctness([rows[b] for b in failed], hinted)
            for i, b in enumerate(failed):
                samples[b], correct[b] = hinted[i], hinted_correct[i]
        return samples, correct, {**metrics, "rationalised": len(failed) / len(rows)}


class Variational(Objective):
    """Traces z_k ~ q(z | x, y); log π(z_k, y | x) and log q(z_k | x, y) from one forward pass each.

    A trace is q's completion cut before its first `Answer` token (`ReasonTrainer.cut_trace`); the y-part
    `Answer: y` + EOS is appended for π, so log π(z, y | x) = log π(z | x) + log π(y | x, z) comes from one
    pass over the joint ids, and its per-token log-probs give log π(y | x, z) for the log.
    """

    def __init__(self, trainer: ReasonTrainer) -> None:
        super().__init__(trainer)
        t = self.config.weight_temperature
        self.theta_loss = ElboThetaLoss() if self.config.objective == "elbo" else MultiTraceThetaLoss(t)
        self.posterior_loss = {
            "reverse_kl": ReverseKLPosteriorLoss(),
            "forward_kl": ForwardKLPosteriorLoss(t),
            "frozen": None,
        }[self.config.posterior_update]

    def traces(self, rows: list[dict], hints: list[list[int]], micro: int):
        """(traces z, joint ids z + `Answer: y` + EOS, whether q's own completion was correct)."""
        traces, joints, q_correct = [], [], []
        for r, group in zip(rows, self.sample("posterior", hints, micro)):
            for ids in group:
                z = self.trainer.cut_trace(ids)
                traces.append(z)
                suffix = answer_suffix(self.policy.decode(z), r["answer"])
                joints.append(z + self.trainer.continuation(suffix))
                q_correct.append(is_correct(self.policy.decode(ids), r["answer"]))
        return traces, joints, q_correct

    def score(self, rows: list[dict], micro: int) -> dict:
        """K traces per question from q and their (B, K) log π(z, y | x) and log q(z | x, y).

        log q is scored under the distribution the traces were drawn from (the `temperature`/`top_p` of
        the config, `Policy.logprobs`), so log w = log π - log q is a true importance log-weight.
        """
        c, k = self.config, self.config.k
        prompts = self.policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
        hints = self.policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
        traces, joints, q_correct = self.traces(rows, hints, micro)
        with self.policy.use("policy"):
            x_rep = [p for p in prompts for _ in range(k)]
            token_logp, mask = self.policy.logprobs(x_rep, joints, per_token=True)  # (BK, T)
        z_len = torch.tensor([len(z) for z in traces], device=token_logp.device)
        in_z = torch.arange(token_logp.shape[1], device=token_logp.device)[None] < z_len[:, None]  # (BK, T)
        log_y_given_z = (token_logp * (~in_z)).sum(-1).detach()  # log π(y | x, z)
        with torch.enable_grad() if self.posterior_loss is not None else torch.no_grad():
            with self.policy.use("posterior"):
                log_q_sum = self.policy.logprobs(
                    [h for h in hints for _ in range(k)], traces, temperature=c.temperature, top_p=c.top_p
                )  # (BK,)
        return {
            "log_joint": sequence_logprob(token_logp.sum(-1), mask.sum(-1), c.per_token).view(len(rows), k),
            "log_q": sequence_logprob(log_q_sum, z_len, c.per_token).view(len(rows), k),
            "log_y_given_z": log_y_given_z,
            "z_len": z_len,
            "q_correct": q_correct,
        }

    def __call__(self, micro: int) -> Step:
        s = self.score(self.trainer.rows(micro), micro)
        out = self.theta_loss(s["log_joint"], s["log_q"])
        loss, metrics = out.loss, dict(out.metrics)
        if self.posterior_loss is not None:
            post = self.posterior_loss(s["log_joint"], s["log_q"])
            loss = loss + post.loss
            metrics.update(post.metrics)
        metrics.update(
            {
                "answer_prob": s["log_y_given_z"].exp().mean().item(),
                "posterior_accuracy": sum(s["q_correct"]) / len(s["q_correct"]),
                "trace_len": s["z_len"].float().mean().item(),
            }
        )
        return loss, metrics


def objective_of(trainer: ReasonTrainer) -> Objective:
    """The objective class of `trainer.config.objective` (grpo_trl runs TRL's own loop instead)."""
    name = trainer.config.objective
    if name == "sft":
        return SFT(trainer)
    if name in ("rft", "grpo"):
        return OnPolicy(trainer)
    if name == "star":
        return STaR(trainer)
    return Variational(trainer)
