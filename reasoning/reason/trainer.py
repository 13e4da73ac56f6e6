"""Variational reasoning and its baselines in one resumable Accelerate loop (`finetune.loop.TrainLoop`).

One base model carries two named LoRA adapters (`reasoning.finetune.policy.Policy`):

- `policy`: π_θ(z, y | x), prompted with the question (`reasoning.reason.tasks.policy_prompt`);
- `posterior` (variational objectives only): q_φ(z | x, y), the same base prompted with the question and
  the answer as a hint (`reasoning.reason.tasks.posterior_prompt`).

How q is initialised: its adapter starts equal to the base model (LoRA B = 0) and is warmed up by
`posterior_warmup_steps` SFT updates on the first `posterior_warmup_examples` gold traces of the training
split, with the answer in its prompt (the reference recipe's "SFT q on a few gold traces"). These warm-up
updates run as the first updates of the same loop, so they are checkpointed and resumed like the rest;
π's adapter gets no gradient during them.

Each micro-step draws `batch_size` questions from (seed, micro-step, process) only, so a resumed run
repeats an uninterrupted one, and then runs its objective (`reasoning.reason.objectives`, one class per
family; losses in `reasoning.reason.losses`):

    sft         log π(z*, y | x) on the gold traces z*
    rft, grpo   K completions o_k ~ π(· | x); c_k = is_correct(o_k); RFT / GRPO weights on log π(o_k | x)
    elbo        K (=1) traces z_k ~ q(· | x, y); θ: ELBO, φ: reverse KL (score function)
    iwae        K traces from q; θ: multi-trace bound (self-normalised weights), φ: reverse KL
    forward_kl  K traces from q; θ: multi-trace bound, φ: forward KL (weighted SFT of q, same weights)

`grpo_trl` (TRL's GRPOTrainer, its own loop) lives in `reasoning.reason.grpo_trl`.

Sampling is `Policy.sample`, i.e. HF `generate` on the very model being trained, so the adapters' current
weights are what generates, with nothing to sync. (A `vllm:` engine would need the LoRA weights pushed to it
after every update; not wired here.)

Written to the run directory (`dln.rundir.RunDir`; a resumed run must have the same config): config.yaml,
metrics.jsonl (+ tensorboard), checkpoints/, and at the end policy/ (PEFT adapter: `hf:<run>/policy`),
posterior/ (variational), eval.json (held-out accuracy).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from dln.atomic import atomic_write_json
from dln.errors import DLNError
from dln.rundir import RunDir
from reasoning.finetune.loop import TrainLoop
from reasoning.finetune.policy import Policy
from reasoning.reason.completions import CompletionIds
from reasoning.reason.config import ReasonConfig
from reasoning.reason.evaluate import evaluate
from reasoning.reason.losses import sequence_logprob
from reasoning.reason.objectives import PosteriorWarmup, objective_of
from reasoning.reason.tasks import answer_only, task_of


def derived_seed(seed: int, step: int, part: int) -> int:
    """A sampling seed for one (step, part) of a run seeded `seed`, distinct across steps and parts:
    (seed * 1_000_003 + step * 101 + part) mod 2^31."""
    return (seed * 1_000_003 + step * 101 + part) % (2**31)


class ReasonTrainer:
    """Builds the task, the adapters and the loop of one run; `fit()` trains (resuming) and evaluates."""

    def __init__(
        self,
        config: ReasonConfig,
        run_dir: str | Path,
        train_rows: list[dict] | None = None,
        hint: bool = False,
    ) -> None:
        """`train_rows` replaces the task's training split (the offline recipe's weighted traces); `hint`
        prompts SFT with the answer, which trains q(z | x, y) on the `policy` adapter (the recipe's q_φ)."""
        if config.objective == "grpo_trl":
            raise DLNError("grpo_trl runs TRL's own trainer: call reasoning.reason.grpo_trl.train_grpo_trl")
        if config.objective == "variational_sft":
            raise DLNError("variational_sft runs in stages: use reasoning.reason.recipe.VariationalSFT")
        self.config, self.run_dir, self.hint = config, Path(run_dir), hint
        self.task = task_of(config)
        if train_rows is not None and not train_rows:
            raise DLNError("the training rows given are empty: nothing to train on")
        self.train_rows = train_rows or answer_only(list(self.task.train), config.gold_count)
        # the rows SFT and q's warm-up may see: those with a gold (or recipe-written) trace
        self.gold_rows = [r for r in self.train_rows if r.get("traces") or r["trace"]]
        if not self.gold_rows and (config.objective == "sft" or config.warmup):
            raise DLNError(
                f"{config.objective} needs gold traces but gold_count {config.gold_count} leaves none; "
                "set gold_count to -1 or >= 1"
            )
        self.adapters = ("policy", "posterior") if config.variational else ("policy",)
        self.policy = Policy.load(config, adapters=self.adapters)
        if config.init_policy:  # a resumed run's checkpoint overwrites it again (`TrainLoop`)
            self.policy.load_adapter_weights("policy", config.init_policy)
        self.loop = TrainLoop(
            replace(config, steps=config.warmup + config.steps),
            self.run_dir,
            self.policy,
            self.adapters,
        )
        self.ids = CompletionIds(self.policy.tokenizer)
        self.ids.warn_if_truncating(self.gold_rows, config.max_new_tokens)
        self.eos = self.ids.eos
        self.warmup = PosteriorWarmup(self)
        self.objective = objective_of(self)

    # -- data -----------------------------------------------------------------------------------------
    def rows(self, micro: int, pool: list[dict] | None = None) -> list[dict]:
        """The questions of micro-step `micro` on this process: a function of (seed, micro, process)."""
        pool = pool or self.train_rows
        rng = random.Random(f"{self.config.seed}-{micro}-{self.loop.process_index}")
        return [pool[rng.randrange(len(pool))] for _ in range(self.config.batch_size)]

    def sample_seed(self, micro: int) -> int:
        """The sampling seed of micro-step `micro` on this process."""
        return derived_seed(self.config.seed, micro, self.loop.process_index)

    def continuation(self, text: str) -> list[int]:
        """`text` as completion ids, EOS appended (`CompletionIds`)."""
        return self.ids.continuation(text)

    def cut_trace(self, ids: list[int]) -> list[int]:
        """The trace part of a sampled completion (`CompletionIds.cut_trace`)."""
        return self.ids.cut_trace(ids)

    def logprob(self, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
        """(N,) log-probs under the active adapter, exact token sums or per-token means (`per_token`)."""
        token_sum = self.policy.logprobs(prompts, completions)
        lengths = torch.tensor([len(c) for c in completions], device=token_sum.device)
        return sequence_logprob(token_sum, lengths, self.config.per_token)

    # -- one micro-step -------------------------------------------------------------------------------
    def step(self, micro: int) -> tuple[torch.Tensor, dict]:
        """q's warm-up for the first `warmup` updates, then the objective's own updates."""
        if micro // self.config.grad_accum < self.config.warmup:
            return self.warmup(micro)
        return self.objective(micro)

    # -- the run --------------------------------------------------------------------------------------
    def start(self) -> bool:
        """Write config.yaml, or check a resumed run has the same config; True when resuming."""
        return RunDir(self.run_dir).start(self.config, ignored=ReasonConfig.RESUME_IGNORED)

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to the end (resuming from the newest checkpoint), save adapters, evaluate held-out."""
        if self.loop.is_main:
            self.start()
        start = time.time()
        rows = self.loop.run(self.step, stop_after=stop_after)
        done = self.loop.step >= self.loop.config.steps
        summary = {
            "run": str(self.run_dir),
            "objective": self.config.objective,
            "step": self.loop.step,
            "finished": done,
            "train_seconds": round(time.time() - start, 2),
            "processes": self.loop.num_processes,
        }
        if not (done and self.loop.is_main):
            return summary
        meta = {"task": self.task.name, "objective": self.config.objective}
        for name in self.adapters:
            self.policy.save(self.run_dir / name, name, meta)
        if rows:
            summary["last"] = rows[-1]
        if self.config.eval_size:
            c = self.config
            result = evaluate(self.policy, self.task.test, "policy", c.eval_size, c.max_new_tokens)
            atomic_write_json(self.run_dir / "eval.json", result)
            summary["eval"] = result
        return summary
