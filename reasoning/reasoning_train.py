"""Variational reasoning and its baselines in one resumable Accelerate loop (`finetune.loop.TrainLoop`).

One base model carries two named LoRA adapters (`reasoning.finetune.policy.Policy`):

- `policy`: π_θ(z, y | x), prompted with the question (`reasoning.tasks.policy_prompt`);
- `posterior` (variational objectives only): q_φ(z | x, y), the same base prompted with the question and
  the answer as a hint (`reasoning.tasks.posterior_prompt`).

How q is initialised: its adapter starts equal to the base model (LoRA B = 0) and is warmed up by
`posterior_warmup_steps` SFT updates on the first `posterior_warmup_examples` gold traces of the training
split, with the answer in its prompt (the reference recipe's "SFT q on a few gold traces"). These warm-up
updates run as the first updates of the same loop, so they are checkpointed and resumed like the rest;
π's adapter gets no gradient during them.

Each micro-step draws `batch_size` questions from (seed, micro-step, process) only, so a resumed run
repeats an uninterrupted one, and then, by objective (losses in `reasoning.reasoning_losses`):

    sft         log π(z*, y | x) on the gold traces z*
    rft, grpo   K completions o_k ~ π(· | x); c_k = is_correct(o_k); RFT / GRPO weights on log π(o_k | x)
    elbo        K (=1) traces z_k ~ q(· | x, y); θ: ELBO, φ: reverse KL (score function)
    iwae        K traces from q; θ: multi-trace bound (self-normalised weights), φ: reverse KL
    forward_kl  K traces from q; θ: multi-trace bound, φ: forward KL (weighted SFT of q, same weights)

A trace z from q is its completion cut before the first `Answer` token (EOS dropped); the y-part
`Answer: y` + EOS is then appended for π, so log π(z, y | x) = log π(z | x) + log π(y | x, z) comes out of
one forward pass over the joint ids (its per-token log-probs also give log π(y | x, z) for the log).

`grpo_trl` (TRL's GRPOTrainer, its own loop) lives in `reasoning.grpo_trl`.

Sampling is `Policy.sample`, i.e. HF `generate` on the very model being trained, so the adapters' current
weights are what generates, with nothing to sync. (A `vllm:` engine would need the LoRA weights pushed to it
after every update; not wired here.)

Written to the run directory: config.yaml, metrics.jsonl (+ tensorboard), checkpoints/, and at the end
policy/ (PEFT adapter: `hf:<run>/policy`), posterior/ (variational), eval.json (held-out accuracy).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from dln.atomic import atomic_write_json, atomic_write_text
from dln.config import build_config, dump_yaml, read_yaml, to_dict
from dln.errors import DLNError
from reasoning.finetune.loop import TrainLoop
from reasoning.finetune.policy import Policy
from reasoning.reason_eval import evaluate
from reasoning.reasoning_config import ReasonConfig
from reasoning.reasoning_losses import (
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
from reasoning.tasks import (
    answer_suffix,
    format_completion,
    is_correct,
    policy_prompt,
    posterior_prompt,
    task_of,
)

CONFIG = "config.yaml"
IGNORED_ON_RESUME = ("progress", "eval_size")  # may change between a run and its resumption


class ReasonTrainer:
    """Builds the task, the adapters and the loop of one run; `fit()` trains (resuming) and evaluates."""

    def __init__(self, config: ReasonConfig, run_dir: str | Path) -> None:
        if config.objective == "grpo_trl":
            raise DLNError("grpo_trl runs TRL's own trainer: call reasoning.grpo_trl.train_grpo_trl")
        self.config, self.run_dir = config, Path(run_dir)
        self.task = task_of(config)
        self.train_rows = list(self.task.train)
        self.adapters = ("policy", "posterior") if config.variational else ("policy",)
        self.policy = Policy.load(config, adapters=self.adapters)
        self.loop = TrainLoop(
            replace(config, steps=config.warmup + config.steps),
            self.run_dir,
            self.policy,
            self.adapters,
        )
        tokenizer = self.policy.tokenizer
        self.eos = tokenizer.eos_token_id
        self.answer_token_ids = {i for t, i in tokenizer.get_vocab().items() if "Answer" in t}
        t = config.weight_temperature
        self.theta_loss = ElboThetaLoss() if config.objective == "elbo" else MultiTraceThetaLoss(t)
        self.posterior_loss = {
            "reverse_kl": ReverseKLPosteriorLoss(),
            "forward_kl": ForwardKLPosteriorLoss(t),
            "frozen": None,
        }[config.posterior_update]

    # -- data -----------------------------------------------------------------------------------------
    def rows(self, micro: int, pool: list[dict] | None = None) -> list[dict]:
        """The questions of micro-step `micro` on this process: a function of (seed, micro, process)."""
        pool = pool or self.train_rows
        rng = random.Random(f"{self.config.seed}-{micro}-{self.loop.process_index}")
        return [pool[rng.randrange(len(pool))] for _ in range(self.config.batch_size)]

    def _seed(self, micro: int) -> int:
        return (self.config.seed * 1_000_003 + micro * 101 + self.loop.process_index) % (2**31)

    def _continuation(self, text: str) -> list[int]:
        return self.policy.tokenizer(text, add_special_tokens=False).input_ids + [self.eos]

    def cut_trace(self, ids: list[int]) -> list[int]:
        """The trace part of a sampled completion: the ids before its first `Answer` token, EOS dropped."""
        for i, token in enumerate(ids):
            if token in self.answer_token_ids:
                return ids[:i]
        return ids[:-1] if ids and ids[-1] == self.eos else ids

    # -- one micro-step -------------------------------------------------------------------------------
    def step(self, micro: int) -> tuple[torch.Tensor, dict]:
        if micro // self.config.grad_accum < self.config.warmup:
            return self._posterior_warmup(micro)
        objective = self.config.objective
        if objective == "sft":
            return self._sft(micro)
        if objective in ("rft", "grpo"):
            return self._on_policy(micro)
        return self._variational(micro)

    def _sft(self, micro: int) -> tuple[torch.Tensor, dict]:
        rows = self.rows(micro)
        prompts = self.policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
        gold = [self._continuation(format_completion(r["trace"], r["answer"])) for r in rows]
        with self.policy.use("policy"):
            log_joint = self._logprob(prompts, gold)
        out = SFTLoss()(log_joint)
        return out.loss, {**out.metrics, "trace_len": sum(map(len, gold)) / len(gold)}

    def _posterior_warmup(self, micro: int) -> tuple[torch.Tensor, dict]:
        pool = self.train_rows[: max(1, self.config.posterior_warmup_examples)]
        rows = self.rows(micro, pool)
        hints = self.policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
        gold = [self._continuation(format_completion(r["trace"], r["answer"])) for r in rows]
        with self.policy.use("posterior"):
            log_q = self._logprob(hints, gold)
        return -log_q.mean(), {"posterior_nll": -log_q.detach().mean().item(), "warmup": 1.0}

    def _logprob(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        """(N,) log-probs, exact token sums or per-token means (`per_token`)."""
        token_sum = self.policy.logprobs(prompts, completions)
        lengths = torch.tensor([len(c) for c in completions], device=token_sum.device)
        return sequence_logprob(token_sum, lengths, self.config.per_token)

    def _on_policy(self, micro: int) -> tuple[torch.Tensor, dict]:
        """RFT / GRPO: K samples from π per question; only samples with a non-zero weight are scored."""
        c = self.config
        rows = self.rows(micro)
        prompts = self.policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
        with self.policy.use("policy"):
            samples = self.policy.sample(
                prompts,
                n=c.k,
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=self._seed(micro),
            )
        flat = [ids for group in samples for ids in group]  # (B*K) lists
        correct = torch.tensor(
            [
                [is_correct(self.policy.decode(ids), r["answer"]) for ids in group]
                for r, group in zip(rows, samples)
            ],
            dtype=torch.float64,
        )  # (B, K)
        loss_fn = RFTLoss(c.debias) if c.objective == "rft" else GRPOLoss(c.debias)
        coef = rft_weights(correct, c.debias) if c.objective == "rft" else grpo_advantages(correct, c.debias)
        chosen = coef.flatten().nonzero().flatten().tolist()
        log_policy = torch.zeros(len(flat), device=self.policy.device)
        if chosen:
            with self.policy.use("policy"):
                scored = self._logprob([prompts[i // c.k] for i in chosen], [flat[i] for i in chosen])
            log_policy = log_policy.index_put((torch.tensor(chosen, device=scored.device),), scored)
        else:  # nothing to learn from: a zero loss that still has a graph for backward
            log_policy = log_policy + 0.0 * sum(p.sum() for p in self.policy.parameters("policy"))
        out = loss_fn(log_policy.view(len(rows), c.k), correct)
        return out.loss, {
            **out.metrics,
            "accuracy": correct.mean().item(),
            "trace_len": sum(map(len, flat)) / len(flat),
        }

    def _variational(self, micro: int) -> tuple[torch.Tensor, dict]:
        """Traces z_k ~ q(z | x, y); log π(z_k, y | x) and log q(z_k | x, y) from one forward pass each."""
        c = self.config
        k = c.k
        rows = self.rows(micro)
        prompts = self.policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
        hints = self.policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
        with self.policy.use("posterior"):
            samples = self.policy.sample(
                hints,
                n=k,
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                seed=self._seed(micro),
            )
        traces, joints, q_correct = [], [], []
        for r, group in zip(rows, samples):
            for ids in group:
                z = self.cut_trace(ids)
                z_text = self.policy.decode(z)
                traces.append(z)
                joints.append(z + self._continuation(answer_suffix(z_text, r["answer"])))
                q_correct.append(is_correct(self.policy.decode(ids), r["answer"]))
        x_rep = [p for p in prompts for _ in range(k)]
        h_rep = [h for h in hints for _ in range(k)]
        with self.policy.use("policy"):
            token_logp, mask = self.policy.logprobs(x_rep, joints, per_token=True)  # (BK, T)
        z_len = torch.tensor([len(z) for z in traces], device=token_logp.device)
        joint_len = mask.sum(-1)
        in_z = torch.arange(token_logp.shape[1], device=token_logp.device)[None] < z_len[:, None]  # (BK, T)
        log_joint_sum = token_logp.sum(-1)
        log_y_given_z = (token_logp * (~in_z)).sum(-1).detach()  # log π(y | x, z)
        with torch.enable_grad() if self.posterior_loss is not None else torch.no_grad():
            with self.policy.use("posterior"):
                log_q_sum = self.policy.logprobs(h_rep, traces)  # (BK,)
        log_joint = sequence_logprob(log_joint_sum, joint_len, c.per_token).view(len(rows), k)
        log_q = sequence_logprob(log_q_sum, z_len, c.per_token).view(len(rows), k)
        out = self.theta_loss(log_joint, log_q)
        loss = out.loss
        metrics = dict(out.metrics)
        if self.posterior_loss is not None:
            post = self.posterior_loss(log_joint, log_q)
            loss = loss + post.loss
            metrics.update(post.metrics)
        metrics.update(
            {
                "answer_prob": log_y_given_z.exp().mean().item(),
                "posterior_accuracy": sum(q_correct) / len(q_correct),
                "trace_len": z_len.float().mean().item(),
            }
        )
        return loss, metrics

    # -- the run --------------------------------------------------------------------------------------
    def write_config(self) -> None:
        path = self.run_dir / CONFIG
        if path.exists():
            old = read_yaml(path)
            new = to_dict(self.config)
            changed = [k for k in new if k not in IGNORED_ON_RESUME and old.get(k) != new[k]]
            if changed:
                raise DLNError(
                    f"{self.run_dir} holds a run with a different config ({', '.join(changed)}); resume it "
                    f"with the same config, or write to a new --out"
                )
        atomic_write_text(path, dump_yaml(self.config))

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the end (resuming from the newest checkpoint), save adapters, evaluate held-out."""
        if self.loop.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.write_config()
        start = time.time()
        rows = self.loop.run(self.step, stop_after=stop_after)
        train_seconds = time.time() - start
        done = self.loop.step >= self.loop.config.steps
        summary = {
            "run": str(self.run_dir),
            "objective": self.config.objective,
            "step": self.loop.step,
            "finished": done,
            "train_seconds": round(train_seconds, 2),
            "processes": self.loop.num_processes,
        }
        if not (done and self.loop.is_main):
            return summary
        meta = {"task": self.task.name, "objective": self.config.objective}
        self.policy.save(self.run_dir / "policy", "policy", meta)
        if self.config.variational:
            self.policy.save(self.run_dir / "posterior", "posterior", meta)
        if rows:
            summary["last"] = rows[-1]
        if self.config.eval_size:
            result = evaluate(
                self.policy,
                self.task.test,
                "policy",
                limit=self.config.eval_size,
                max_new_tokens=self.config.max_new_tokens,
            )
            atomic_write_json(self.run_dir / "eval.json", result)
            summary["eval"] = result
        return summary


def load_run_config(run_dir: str | Path) -> ReasonConfig:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise DLNError(f"{run_dir} is not a reasoning run (no {CONFIG}); train one with dln reason train")
    return build_config(ReasonConfig, read_yaml(path), source=str(path))


def summary_line(summary: dict) -> str:
    return json.dumps(summary)
