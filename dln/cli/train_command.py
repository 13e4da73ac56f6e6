"""`dln train` (prompt training from a YAML config plus overrides) and `dln eval` (accuracy of a run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dln.cli.common import add_model_arguments
from dln.errors import DLNError


def config_epilog() -> str:
    from dln.cli.common import config_epilog as keys_epilog
    from dln.train_config import PRESETS, TrainConfig

    return keys_epilog(TrainConfig, ["presets: " + "; ".join(f"{k}: {v}" for k, v in PRESETS.items())])


def register(subparsers) -> None:
    from dln.cli import HelpFormatter

    train = subparsers.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="train a prompt program (DLN-1, DLN-2, baselines)",
        description="Train a prompt program and write a run directory (config.yaml, metrics.jsonl, "
        "checkpoint.json, program.json).\nRunning the same command again resumes an interrupted run.\n"
        "Examples:\n  dln train --config configs/dln1/topic.yaml --out runs/topic\n"
        "  dln train --train t.jsonl --dev d.jsonl --test s.jsonl --preset light --out runs/mine",
        epilog=config_epilog(),
    )
    train.add_argument("--config", help="YAML run config (see configs/)")
    train.add_argument("--out", help="run directory (default: runs/<task>-<method>-<seed>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(train)
    train.set_defaults(handler=run_train, model=None, accepts_overrides=True)

    evaluate = subparsers.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="accuracy of a trained program on a split",
        description='Print one JSON object: {"accuracy", "n", "split", ...}.\n'
        "Example: dln eval --run runs/topic --split test",
    )
    evaluate.add_argument("--run", required=True, help="run directory written by dln train")
    evaluate.add_argument("--split", default="test", choices=["train", "dev", "test"], help="which split")
    evaluate.add_argument("--data", help="evaluate on this JSONL/CSV file instead of the run's split")
    evaluate.add_argument(
        "--name", help="task name to report (default: the task's, or the --data file's directory name)"
    )
    evaluate.add_argument("--limit", type=int, default=0, help="first N examples only (0: all)")
    evaluate.add_argument("--no-cache", action="store_true", help="bypass the request cache")
    evaluate.add_argument("--cache", default=None, metavar="PATH", help="request-cache file")
    evaluate.set_defaults(handler=run_eval, accepts_overrides=True)


def run_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from dln.config import build_config, parse_overrides, read_yaml
    from dln.lm import load_model
    from dln.train import PromptTrainer
    from dln.train_config import TrainConfig, apply_preset

    cli_values = parse_overrides(overrides)
    if args.model:
        cli_values["model"] = args.model
    values = apply_preset(read_yaml(args.config) if args.config else {}, cli_values)
    config = build_config(TrainConfig, values, source=args.config or "command line")
    from dln.data.loading import user_task_name

    task_name = config.task or (user_task_name(config.train) if config.train else "task")
    out = args.out or f"runs/{task_name}-{config.method}-{config.seed}"
    model = load_model(config.model, cache=False if args.no_cache else args.cache, **config.model_options())
    trainer = PromptTrainer(config, out, model=model, progress=not args.quiet)
    calls = trainer.projected_calls()
    print(
        f"dln train: {config.method} on {trainer.task.name} ({len(trainer.task.train)} train, "
        f"{len(trainer.dev_batch.inputs)} dev) with {config.model}; at most {calls['generations']} "
        f"generations"
        f" and {calls['scored_contexts']} scored contexts (before the cache) -> {out}",
        flush=True,
    )
    program = trainer.fit()
    print(
        json.dumps(
            {
                "run": out,
                "dev_accuracy": program.metadata["dev_accuracy"],
                "best_iteration": program.metadata["best_iteration"],
                "prompt": program.output.prompt,
            }
        )
    )


def run_eval(args: argparse.Namespace, overrides: list[str]) -> None:
    from dln.config import build_config, read_yaml
    from dln.data.loading import load_task, read_split, user_task_name
    from dln.lm import load_model
    from dln.program import load_program
    from dln.train import accuracy, split_batch
    from dln.train_config import TrainConfig

    if overrides:
        raise DLNError(f"unknown argument(s) {' '.join(overrides)}; see dln eval --help")
    run = Path(args.run)
    config = build_config(TrainConfig, read_yaml(run / "config.yaml"), source=str(run / "config.yaml"))
    program = load_program(run / "program.json")
    cache = False if args.no_cache else args.cache
    program.bind(load_model(program.model_uri, cache=cache, **program.model_options))
    task = load_task(config.task, train=config.train, dev=config.dev, test=config.test)
    split = read_split(args.data) if args.data else task.split(args.split)
    if args.limit:
        split = split.select(range(min(args.limit, len(split))))
    batch = split_batch(split, task.labels)
    print(
        json.dumps(
            {
                "accuracy": accuracy(program, batch),
                "n": len(batch.inputs),
                "split": args.data or args.split,
                "task": args.name or (user_task_name(args.data) if args.data else task.name),
                "method": config.method,
                "run": str(run),
            }
        )
    )
