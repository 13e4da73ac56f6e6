"""vBoN fine-tuning (and the KL-regularised RL baseline) of a LoRA policy, in `finetune.loop.TrainLoop`.

The objective (derived in `reasoning.bon.density`): maximise E_{y~π_θ}[R(x, y)] - β KL(π_θ || π_ref) with

- `objective: vbon`: R = log F̂(r(x, y)), β = 1/(N-1) (first order), or with `exact: true`
  R = [log π_BoN(y|x) - log π_ref(y|x)] / (N-1), the exact BoN log-ratio on the same scale;
- `objective: kl_rl`: R = r(x, y), the raw reward, β = `kl_coef` (the classic RLHF baseline).

The gradient is REINFORCE with a leave-one-out baseline (RLOO, as in TRL's RLOOTrainer): per prompt, k
samples y_1..y_k ~ π_θ, the KL folded into the reward, R'_j = R_j - β (log π_θ(y_j|x) - log π_ref(y_j|x)),
advantage A_j = R'_j - mean_{l≠j} R'_l, loss = -mean_j A_j log π_θ(y_j|x). The reference is the base model
with the adapter disabled, so it costs no second copy of the weights.

F̂ comes from M reference samples per training prompt (`ReferenceRewards`), drawn and scored once, then
cached on disk (atomically, chunk by chunk, so a killed run keeps what it drew) and shared by every run
with the same model, reward, prompts and sampling settings.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import torch

from dln.atomic import atomic_write_json
from dln.data.jsonl import read_jsonl
from dln.errors import DLNError
from dln.home import dln_home
from dln.rundir import RunDir
from reasoning.bon.config import VBoNConfig
from reasoning.bon.density import smoothed_log_cdf, vbon_log_ratio
from reasoning.bon.rewards import RewardFn, load_reward, score_batch
from reasoning.finetune.loop import TrainLoop
from reasoning.finetune.policy import Policy

ADAPTER = "policy"
SHIPPED_PROMPTS = Path(__file__).parent / "data" / "review_prompts"


def load_prompts(spec: str, split: str = "train") -> list[str]:
    """Prompts of the shipped `reviews` set or of a JSONL file (`{"prompt": ...}` per line)."""
    path = SHIPPED_PROMPTS / f"{split}.jsonl" if spec == "reviews" else Path(spec)
    hint = 'use `reviews` or a JSONL file with lines like {"prompt": "The film"}'
    prompts = [str(r["prompt"]) for r in read_jsonl(str(path), ("prompt",), hint)]
    if not prompts:
        raise DLNError(f"{path} holds no prompts; {hint}")
    return prompts


class ReferenceRewards:
    """prompt -> rewards of M reference samples, drawn once and cached on disk (resumable by chunk)."""

    def __init__(self, policy: Policy, reward: RewardFn, config: VBoNConfig, path: Path | None = None):
        self.policy, self.reward, self.config = policy, reward, config
        key = json.dumps(
            [
                config.model,
                config.reward,
                config.reference_samples,
                config.max_new_tokens,
                config.temperature,
                config.seed,
            ],
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        self.path = path or dln_home() / "vbon" / f"reference-{digest}.json"
        self.table: dict[str, list[float]] = (
            json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        )

    def ensure(self, prompts: list[str], chunk: int = 8, progress: bool = True) -> None:
        missing = [p for p in dict.fromkeys(prompts) if p not in self.table]
        bar = None
        if missing and progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(missing), desc="reference samples", unit="prompt")
        for start in range(0, len(missing), chunk):
            part = missing[start : start + chunk]
            rewards = sample_rewards(
                self.policy,
                None,
                part,
                self.reward,
                self.config.reference_samples,
                self.config,
                seed=self.config.seed + 7919 * (start + 1),
            )[2]
            self.table.update(zip(part, rewards))
            atomic_write_json(self.path, self.table)
            if bar is not None:
                bar.update(len(part))
        if bar is not None:
            bar.close()

    def log_cdf(self, prompt: str, rewards: list[float]) -> list[float]:
        return smoothed_log_cdf(self.table[prompt], rewards)


def sample_rewards(
    policy: Policy, adapter: str | None, prompts: list[str], reward: RewardFn, k: int, config, seed: int
) -> tuple[list[list[int]], list[list[list[int]]], list[list[float]]]:
    """Prompt token ids, k completions per prompt under `adapter` (None: the reference), their rewards."""
    ids = policy.encode_prompts(prompts, chat=False)
    with policy.use(adapter):
        samples = policy.sample(
            ids, n=k, max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=seed
        )
    texts = [policy.decode(c) for group in samples for c in group]
    flat = score_batch(reward, [p for p in prompts for _ in range(k)], texts)
    return ids, samples, [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_j = R_j - mean_{l≠j} R_l along the last dim (k >= 2)."""
    k = rewards.shape[-1]
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)


class VBoNTrainer:
    """Builds the policy, the reference CDF and the loop; `fit()` trains (resuming) and saves the adapter."""

    def __init__(self, config: VBoNConfig, run_dir: str | Path, progress: bool = True) -> None:
        self.config, self.run_dir = config, Path(run_dir)
        self.progress = progress and config.progress
        self.prompts = load_prompts(config.prompts, "train")
        if config.train_prompts:
            self.prompts = self.prompts[: config.train_prompts]
        self.reward = load_reward(config.reward)
        self.policy = Policy.load(config, adapters=(ADAPTER,))
        self.reference = ReferenceRewards(self.policy, self.reward, config)

    def fit(self, stop_after: int | None = None) -> Path:
        RunDir(self.run_dir).start(self.config, ignored=("progress",))
        if self.config.objective == "vbon":
            self.reference.ensure(self.prompts, progress=self.progress)
        loop = TrainLoop(self.config, self.run_dir, self.policy, [ADAPTER])
        loop.config.progress = self.progress
        loop.run(lambda step: self.step(step, loop), stop_after=stop_after)
        if loop.step >= self.config.steps:
            meta = {"objective": self.config.objective, "bon_n": self.config.bon_n, "steps": loop.step}
            self.policy.save(self.run_dir / ADAPTER, ADAPTER, meta)
        return self.run_dir / ADAPTER

    def step(self, step: int, loop: TrainLoop) -> tuple[torch.Tensor, dict]:
        config = self.config
        rng = random.Random(config.seed * 1_000_003 + step * loop.num_processes + loop.process_index)
        prompts = rng.sample(self.prompts, min(config.prompts_per_step, len(self.prompts)))
        k = config.samples_per_prompt
        prompt_ids, samples, raw = sample_rewards(
            self.policy, ADAPTER, prompts, self.reward, k, config, seed=rng.randrange(2**31)
        )
        flat_prompts = [ids for ids in prompt_ids for _ in range(k)]
        flat_samples = [c for group in samples for c in group]
        with self.policy.use(ADAPTER):
            log_policy = self.policy.logprobs(flat_prompts, flat_samples).view(len(prompts), k)  # (P, k)
        with torch.no_grad(), self.policy.use(None):
            log_ref = self.policy.logprobs(flat_prompts, flat_samples).view(len(prompts), k)
        raw_t = torch.tensor(raw, dtype=torch.float32)
        task_reward, metrics = self.task_reward(prompts, raw, log_ref)
        kl = (log_policy.detach() - log_ref).float()
        shaped = task_reward - config.beta * kl  # (P, k)
        loss = -(rloo_advantages(shaped).to(log_policy.dtype) * log_policy).mean()
        lengths = [len(c) for c in flat_samples]
        return loss, {
            "reward": raw_t.mean().item(),
            "kl": kl.mean().item(),
            "objective": shaped.mean().item(),
            "length": sum(lengths) / len(lengths),
            **metrics,
        }

    def task_reward(self, prompts: list[str], raw: list[list[float]], log_ref: torch.Tensor):
        config = self.config
        if config.objective == "kl_rl":
            return torch.tensor(raw, dtype=torch.float32), {}
        log_cdf = torch.tensor(
            [self.reference.log_cdf(p, r) for p, r in zip(prompts, raw)], dtype=torch.float64
        )
        metrics = {"log_cdf": log_cdf.mean().item()}
        if not config.exact:
            return log_cdf.float(), metrics
        ratio = vbon_log_ratio(log_ref.detach().double(), log_cdf, config.bon_n) / (config.bon_n - 1)
        return ratio.float(), metrics
