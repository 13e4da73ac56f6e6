"""`dln tfb train-map | fit | eval`: training-free Bayesianization of a LoRA adapter (docs/tfb.md)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dln.errors import DLNError

# = reasoning.tfb.posterior.SIGMA_MIN, SIGMA_MAX (literal here so that `dln --help` does not import torch)
SIGMA_MIN, SIGMA_MAX = 1e-4, 1.0


def register(subparsers) -> None:
    from dln.cli import HelpFormatter

    tfb = subparsers.add_parser(
        "tfb",
        formatter_class=HelpFormatter,
        help="Bayesianize a LoRA adapter without training (TFB)",
        description="Training-free Bayesianization: a MAP LoRA adapter gets a low-rank isotropic Gaussian "
        "whose σ is the largest keeping an anchor-set score within a tolerance.\n"
        "  dln tfb train-map --task sentiment --out runs/A\n"
        "  dln tfb fit --adapter runs/A --anchor data.jsonl --metric acc --tolerance 0.01 "
        "--out runs/A-tfb\n"
        "  dln tfb eval --adapter runs/A-tfb --data test.jsonl --samples 10",
    )
    commands = tfb.add_subparsers(title="tfb commands", metavar="TFB_COMMAND")
    _add_train_map(commands, HelpFormatter)
    _add_fit(commands, HelpFormatter)
    _add_eval(commands, HelpFormatter)
    tfb.set_defaults(handler=lambda args: tfb.print_help())


def _add_train_map(commands, HelpFormatter) -> None:
    train = commands.add_parser(
        "train-map",
        formatter_class=HelpFormatter,
        help="fine-tune the MAP LoRA adapter on a label task",
        description="Fine-tune a PEFT LoRA adapter by cross-entropy over the label set in run directory "
        "--out (resumes from its last checkpoint; the adapter: OUT/adapter).\n"
        "Example: dln tfb train-map --config configs/tfb/sentiment.yaml --out runs/A --steps 100",
        epilog=_config_epilog(),
    )
    train.add_argument("--config", help="YAML config (see configs/tfb/)")
    train.add_argument("--task", help="shipped task name (overrides the config's)")
    train.add_argument("--out", required=True, help="run directory (adapter: OUT/adapter; resumes)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run_train_map, accepts_overrides=True)


def _add_fit(commands, HelpFormatter) -> None:
    fit = commands.add_parser(
        "fit",
        formatter_class=HelpFormatter,
        help="search σ on an anchor set, save the Bayesianized adapter",
        description="The anchor set is unlabelled (only `input` is read); its labels are the MAP adapter's "
        f"own predictions.\nσ is bisected in log space over [--sigma-min, --sigma-max] "
        f"(default [{SIGMA_MIN}, {SIGMA_MAX}]).",
    )
    fit.add_argument("--adapter", required=True, help="MAP adapter directory (dln tfb train-map)")
    fit.add_argument("--anchor", help='JSONL of {"input": ...}; default: the task\'s training inputs')
    fit.add_argument("--anchor-size", type=int, default=64, help="use the first N anchor inputs (0: all)")
    fit.add_argument(
        "--metric",
        default="acc",
        choices=["acc", "nll"],
        help="acc: accuracy drop <= tolerance; nll: relative NLL increase <= tolerance",
    )
    fit.add_argument("--tolerance", type=float, default=0.01, help="ε")
    fit.add_argument("--samples", type=int, default=4, help="weight samples per σ during the search")
    fit.add_argument("--sigma-min", type=float, default=SIGMA_MIN, help="lower end of the search range")
    fit.add_argument("--sigma-max", type=float, default=SIGMA_MAX, help="upper end of the search range")
    fit.add_argument("--steps", type=int, default=8, help="bisection steps")
    fit.add_argument("--seed", type=int, default=0, help="seed of the noise draws (shared by every σ)")
    fit.add_argument("--out", required=True, help="directory of the Bayesianized adapter")
    fit.set_defaults(handler=run_fit)


def _add_eval(commands, HelpFormatter) -> None:
    evaluate = commands.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="accuracy, ECE, NLL, Brier of an adapter on data",
        description='Print one JSON object {"acc", "ece", "nll", "brier", "n", "samples", "sigma", ...}.\n'
        "--samples 0 is the MAP adapter; --mc-dropout switches LoRA dropout on instead of TFB "
        "noise.",
    )
    evaluate.add_argument("--adapter", required=True, help="adapter directory (dln tfb fit or train-map)")
    evaluate.add_argument("--data", help="JSONL/CSV with input and target; default: the task's test split")
    evaluate.add_argument("--samples", type=int, default=10, help="weight samples S (0: MAP)")
    evaluate.add_argument("--limit", type=int, default=0, help="first N examples only (0: all)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the weight samples")
    evaluate.add_argument("--mc-dropout", action="store_true", help="MC-dropout baseline instead of TFB")
    evaluate.add_argument("--predictions", help="also write each example's label distribution to this JSONL")
    evaluate.set_defaults(handler=run_eval)


def _config_epilog() -> str:
    from dln.cli.common import config_epilog
    from reasoning.tfb.config import MapTrainConfig  # no torch at import time

    return config_epilog(MapTrainConfig)


def run_train_map(args: argparse.Namespace, overrides: list[str]) -> None:
    from dln.config import load_config
    from reasoning.tfb.config import MapTrainConfig
    from reasoning.tfb.map_train import train_map

    config = load_config(
        MapTrainConfig, args.config, overrides + (["--task", args.task] if args.task else [])
    )
    if not config.task and not config.train:
        raise DLNError("no training data: give --task NAME (e.g. sentiment) or --train FILE --dev FILE")
    print(
        f"dln tfb train-map: {config.steps} steps of {config.batch_size} on {config.task or config.train} "
        f"with {config.model}, LoRA r={config.lora_rank} on {config.target_modules} -> {args.out}",
        flush=True,
    )
    print(json.dumps(train_map(config, args.out, progress=not args.quiet)))


def _check_adapter(path: str) -> None:
    if not Path(path).is_dir():
        raise DLNError(
            f"adapter directory {path} does not exist; make one with dln tfb train-map --out {path}"
        )


def run_fit(args: argparse.Namespace) -> None:
    from dln.cli.common import read_jsonl
    from dln.data.loading import load_task
    from reasoning.tfb.bayesian_lora import BayesianLoRA

    _check_adapter(args.adapter)
    if args.tolerance < 0:
        raise DLNError(f"--tolerance must be >= 0, got {args.tolerance}")
    bayes = BayesianLoRA.load(args.adapter)
    if args.anchor:
        inputs = [str(r["input"]) for r in read_jsonl(args.anchor, ("input",))]
    else:
        task = bayes.meta.get("task")
        try:
            inputs = list(load_task(task).train["input"])
        except DLNError as err:
            raise DLNError(
                f"no --anchor given and the adapter's task {task!r} is not a shipped task "
                f"({err}); pass --anchor FILE"
            ) from err
    inputs = inputs[: args.anchor_size] if args.anchor_size else inputs
    if not inputs:
        raise DLNError(f"the anchor file {args.anchor} has no examples")
    start = time.time()
    result = bayes.fit(
        inputs,
        metric=args.metric,
        tolerance=args.tolerance,
        samples=args.samples,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        steps=args.steps,
        seed=args.seed,
        progress=True,
    )
    bayes.save(args.out)
    print(
        json.dumps(
            {
                "out": args.out,
                "sigma": result.sigma,
                "metric": args.metric,
                "tolerance": args.tolerance,
                "anchor_size": len(inputs),
                "evaluations": len(result.trace) + 1,
                "seconds": round(time.time() - start, 2),
                "note": result.note,
            }
        )
    )


def run_eval(args: argparse.Namespace) -> None:
    import numpy as np

    from dln.data.loading import example_labels, load_task, read_split
    from reasoning.tfb.bayesian_lora import BayesianLoRA
    from reasoning.tfb.metrics import all_metrics

    _check_adapter(args.adapter)
    if args.samples < 0:
        raise DLNError(f"--samples must be >= 0, got {args.samples}")
    bayes = BayesianLoRA.load(args.adapter)
    split = read_split(args.data) if args.data else load_task(bayes.meta.get("task")).split("test")
    if args.limit:
        split = split.select(range(min(args.limit, len(split))))
    for row in split:
        if row["target"] not in bayes.labels:
            raise DLNError(
                f"{args.data or 'test split'}, line {row['line']}: target {row['target']!r} is "
                f"not one of the adapter's labels {bayes.labels}"
            )
    row_labels = example_labels(split, bayes.labels)
    targets = np.array([bayes.labels.index(t) for t in split["target"]])
    start = time.time()
    if args.mc_dropout:
        probs = bayes.mc_dropout_proba(
            list(split["input"]), samples=args.samples, seed=args.seed, row_labels=row_labels
        )
    else:
        probs = bayes.predict_proba(
            list(split["input"]), samples=args.samples, seed=args.seed, row_labels=row_labels
        )
    seconds = time.time() - start
    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8") as handle:
            for x, p in zip(split["input"], probs):
                handle.write(json.dumps({"input": x, "probs": dict(zip(bayes.labels, map(float, p)))}) + "\n")
    method = "mc-dropout" if args.mc_dropout else ("map" if args.samples == 0 else "tfb")
    print(
        json.dumps(
            {
                **all_metrics(probs, targets),
                "n": len(targets),
                "method": method,
                "samples": args.samples,
                "sigma": bayes.sigma,
                "seconds": round(seconds, 2),
                "adapter": args.adapter,
            }
        )
    )
