"""GRPO with TRL's `GRPOTrainer` (objective `grpo_trl`), on the budget of the in-loop objectives.

The same task, prompt (`reasoning.reason.tasks.policy_prompt`), reward (`working.reward`: 1 for a correct
`Answer: N`, else 0), LoRA adapter and budget as `objective: grpo` in `reasoning.reason.trainer`: `steps`
updates of `batch_size` questions with K = `k` completions each (TRL's per-device batch counts completions,
so it is batch_size * k), no reference KL (beta = 0). TRL owns the loop: its sampler, its Accelerate
trainer, its checkpoints (run_dir/trl/checkpoint-N, resumed when present) and its loss normalisation
(per-token, TRL's default `loss_type`), so the two GRPO rows of a table differ in those details; `grpo` is
the one that shares this package's losses, data draws and exact resume.

Written like every other run (`dln.rundir.RunDir`: a resumed run must have the same config): config.yaml,
metrics.jsonl (reward = training accuracy), policy/ (a PEFT adapter, `hf:<run>/policy`), eval.json.
"""

from __future__ import annotations

import time
from pathlib import Path

from dln.atomic import atomic_write_json
from dln.errors import DLNError
from dln.rundir import RunDir
from reasoning.reason.config import ReasonConfig
from reasoning.reason.tasks import policy_prompt, task_of
from reasoning.reason.working import reward

# TRL log keys -> the names the in-loop objectives log
RENAMED = {"reward": "accuracy", "completions/mean_length": "trace_len", "reward_std": "reward_std"}


def correctness_reward(completions, answer, check_working: bool = False, **_) -> list[float]:
    """TRL reward function: 1.0 when a completion's `Answer: N` equals the row's answer (and, with
    `check_working`, no equation of its working is wrong: `reasoning.reason.working.reward`)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(reward(text, gold, check_working)) for text, gold in zip(texts, answer)]


def checked_correctness_reward(completions, answer, **_) -> list[float]:
    """`correctness_reward` with `check_working` (TRL names a reward after its function)."""
    return correctness_reward(completions, answer, check_working=True)


def _metrics_callback(rundir: RunDir):
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "loss" not in logs:
                return
            rundir.log(
                {
                    "step": state.global_step,
                    **{RENAMED.get(k, k): float(v) for k, v in logs.items() if isinstance(v, int | float)},
                }
            )

    return MetricsJsonl()


def _grpo_args(config: ReasonConfig, run_dir: Path):
    """TRL's GRPOConfig on this package's budget: batch_size questions x k completions per update."""
    import torch
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(run_dir / "trl"),
        per_device_train_batch_size=config.batch_size * config.k,
        num_generations=config.k,
        gradient_accumulation_steps=config.grad_accum,
        max_completion_length=config.max_new_tokens,
        max_steps=config.steps,
        learning_rate=config.lr,
        lr_scheduler_type="constant",
        max_grad_norm=config.max_grad_norm or 1e9,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=0.0,
        seed=config.seed,
        bf16=config.bf16_on("cuda" if torch.cuda.is_available() else "cpu"),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,  # a 135M model fits; checkpointing only slows a CPU down
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=not config.progress,
    )


def train_grpo_trl(config: ReasonConfig, run_dir: str | Path) -> dict:
    """Train (resuming from run_dir/trl), save the adapter to run_dir/policy, evaluate; return a summary."""
    if config.debias or config.per_token:
        raise DLNError("grpo_trl uses TRL's own advantages and loss; debias/per_token need objective: grpo")
    run_dir = Path(run_dir)
    rundir = RunDir(run_dir)
    rundir.start(config, ignored=ReasonConfig.RESUME_IGNORED)  # a different config is refused here
    import datasets
    from trl import GRPOTrainer

    from dln.lm.paths import resolve_model_path
    from reasoning.finetune.adapters import lora_config

    task = task_of(config)
    rows = [
        {"prompt": [{"role": "user", "content": policy_prompt(r["question"])}], "answer": r["answer"]}
        for r in task.train
    ]
    checkpoints = sorted((run_dir / "trl").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    # drop the lines of updates after the checkpoint: they run again
    rundir.truncate_metrics(int(checkpoints[-1].name.split("-")[1]) if checkpoints else 0, key="step")
    c = config
    trainer = GRPOTrainer(
        model=resolve_model_path(config.model),
        reward_funcs=checked_correctness_reward if c.check_working else correctness_reward,
        args=_grpo_args(config, run_dir),
        train_dataset=datasets.Dataset.from_list(rows),
        peft_config=lora_config(c.lora_rank, c.lora_alpha, c.lora_dropout, c.target_modules, "CAUSAL_LM"),
        callbacks=[_metrics_callback(rundir)],
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    summary = {
        "run": str(run_dir),
        "objective": "grpo_trl",
        "step": trainer.state.global_step,
        "finished": trainer.state.global_step >= config.steps,
        "train_seconds": round(time.time() - start, 2),
        "processes": trainer.accelerator.num_processes,
    }
    if trainer.accelerator.is_main_process:
        summary.update(_save_and_evaluate(trainer, config, task, rundir))
    return summary


def _save_and_evaluate(trainer, config: ReasonConfig, task, rundir: RunDir) -> dict:
    """Save TRL's adapter as run_dir/policy, score it held-out; the summary's `eval` and `last`."""
    from reasoning.finetune.policy import Policy, PolicyConfig
    from reasoning.reason.evaluate import evaluate

    model = trainer.model
    policy = Policy(
        model,
        trainer.processing_class,
        PolicyConfig(model=config.model, bf16=config.bf16),
        adapters=tuple(model.peft_config),
    )
    name = policy.adapters[0]
    policy.save(rundir.path / "policy", name, {"task": task.name, "objective": "grpo_trl"})
    out = {}
    if config.eval_size:
        model.eval()
        out["eval"] = evaluate(
            policy, task.test, name, limit=config.eval_size, max_new_tokens=config.max_new_tokens
        )
        atomic_write_json(rundir.path / "eval.json", out["eval"])
    metrics = rundir.metrics()
    if metrics:
        out["last"] = metrics[-1]
    return out
