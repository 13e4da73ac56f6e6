"""`dln reason train | eval`: thinking traces as latent variables (`reasoning.reason.trainer`).

Registered through the `dln.commands` entry point (pyproject.toml), so `dln.cli` imports nothing of this
package; torch is imported only when a command runs, so `dln --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dln.errors import DLNError


def register(subparsers) -> None:
    from dln.cli import HelpFormatter

    reason = subparsers.add_parser(
        "reason",
        formatter_class=HelpFormatter,
        help="variational reasoning: ELBO, multi-trace, forward KL, the offline recipe; SFT, RFT, GRPO, STaR",
        description="Fine-tune a LoRA policy whose thinking traces are latent variables.\n"
        "  dln reason train --config configs/reason/forward_kl.yaml --out runs/fkl --steps 20\n"
        "  dln reason eval --run runs/fkl\n"
        "Under several processes or GPUs: accelerate launch --config_file configs/accelerate/<file> "
        "-m dln reason train ...",
    )
    commands = reason.add_subparsers(title="reason commands", metavar="REASON_COMMAND")

    train = commands.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train one objective; running it again resumes from the last checkpoint",
        description="Train and write a run directory: config.yaml, metrics.jsonl, checkpoints/, policy/ "
        "(a PEFT adapter, loads as hf:<run>/policy), eval.json.\nRunning the same command again resumes "
        "an interrupted run. Config keys come from --config, then --key value overrides.",
        epilog=_config_epilog(),
    )
    train.add_argument("--config", help="YAML config (see configs/reason/)")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train, accepts_overrides=True)

    evaluate = commands.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="held-out accuracy of a trained run (greedy, strict `Answer: N`)",
        description='Print one JSON object: {"accuracy", "accuracy_lenient", "n", "trace_len", ...}.\n'
        "Example: dln reason eval --run runs/fkl --limit 100",
    )
    evaluate.add_argument("--run", required=True, help="run directory written by dln reason train")
    evaluate.add_argument("--base", action="store_true", help="score the base model instead of the adapter")
    evaluate.add_argument("--data", help="GSM8K-format JSONL to score instead of the run's test split")
    evaluate.add_argument("--limit", type=int, default=0, help="first N questions only (0: all)")
    evaluate.add_argument("--samples", help="also write every completion to this JSONL")
    evaluate.set_defaults(handler=run_eval)
    reason.set_defaults(handler=lambda args: reason.print_help())


def _config_epilog() -> str:
    from dln.cli.common import config_epilog
    from reasoning.reason.config import ReasonConfig  # no torch at import time

    return config_epilog(ReasonConfig)


def build_reason_config(config_path: str | None, overrides: list[str]):
    from dln.config import load_config
    from reasoning.reason.config import ReasonConfig

    return load_config(ReasonConfig, config_path, overrides)


def run_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from dln.config import dump_yaml
    from reasoning.reason.trainer import ReasonTrainer

    config = build_reason_config(args.config, overrides)
    if args.quiet:
        config.progress = False
    if config.objective == "grpo_trl":  # TRL's GRPOTrainer runs its own loop
        from reasoning.reason.grpo_trl import train_grpo_trl

        print(f"dln reason train: grpo_trl (TRL GRPOTrainer) -> {args.out}\n{dump_yaml(config)}", flush=True)
        print(json.dumps(train_grpo_trl(config, args.out)))
        return
    if config.objective == "variational_sft":  # the offline recipe, in cached stages
        from reasoning.reason.recipe import VariationalSFT

        print(
            f"dln reason train: variational_sft (offline recipe) -> {args.out}\n{dump_yaml(config)}",
            flush=True,
        )
        print(json.dumps(VariationalSFT(config, args.out).fit()))
        return
    trainer = ReasonTrainer(config, args.out)
    if trainer.loop.is_main:
        per_update = config.batch_size * config.grad_accum * trainer.loop.num_processes
        samples = "" if config.objective == "sft" else f", {config.k} traces each"
        print(
            f"dln reason train: {config.objective} on {trainer.task.name} ({len(trainer.task.train)} train, "
            f"{len(trainer.task.test)} test) with {config.model}; {config.warmup} warm-up + {config.steps} "
            f"updates of {per_update} questions{samples} -> {args.out}\n{dump_yaml(config)}",
            flush=True,
        )
    summary = trainer.fit()
    if trainer.loop.is_main:
        print(json.dumps(summary))


def run_eval(args: argparse.Namespace) -> None:
    from reasoning.finetune.policy import Policy, PolicyConfig
    from reasoning.reason.evaluate import evaluate
    from reasoning.reason.tasks import load_jsonl, task_of

    run = Path(args.run)
    config = run_config(run)
    if not args.base and not (run / "policy" / "adapter_config.json").is_file():
        raise DLNError(f"{run} has no trained adapter (policy/); finish it with dln reason train --out {run}")
    if args.limit < 0:
        raise DLNError(f"--limit must be >= 0, got {args.limit}")
    policy = Policy.load(
        PolicyConfig(
            model=config.model,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            target_modules=config.target_modules,
            bf16=config.bf16,
        ),
        adapters=("policy",),
    )
    if not args.base:
        policy.load_adapter_weights("policy", run / "policy")
    split = load_jsonl(args.data) if args.data else task_of(config).test
    result = evaluate(
        policy,
        split,
        None if args.base else "policy",
        limit=args.limit,
        max_new_tokens=config.max_new_tokens,
        samples_out=args.samples,
    )
    print(
        json.dumps(
            {
                **result,
                "run": str(run),
                "model": "base" if args.base else "policy",
                "objective": config.objective,
            }
        )
    )


def run_config(run: Path):
    """The config a `dln reason train` run wrote (`dln.rundir.RunDir`), checked key by key."""
    from dln.config import build_config
    from dln.rundir import RunDir
    from reasoning.reason.config import ReasonConfig

    rundir = RunDir(run)
    if not rundir.config_file.is_file():
        raise DLNError(f"{run} is not a reasoning run (no {rundir.CONFIG}); train one with dln reason train")
    return build_config(ReasonConfig, rundir.config(), source=str(rundir.config_file))
