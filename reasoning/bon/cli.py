"""`dln bon sample | train | eval`: Best-of-N at inference, vBoN fine-tuning, and the reward-KL plane."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dln.errors import DLNError


def register(subparsers) -> None:
    from dln.cli import HelpFormatter

    bon = subparsers.add_parser(
        "bon",
        formatter_class=HelpFormatter,
        help="Best-of-N sampling and variational BoN (vBoN) fine-tuning",
        description="Best-of-N draws N samples, scores them with a reward and keeps the best; vBoN trains a "
        "LoRA policy to sample like BoN in one draw (backward KL to the BoN distribution).\n"
        '  dln bon sample --reward vader -n 8 "The film was"\n'
        "  dln bon train --config configs/bon/n4.yaml --out runs/vbon4\n"
        "  dln bon eval --run runs/vbon4\n"
        "The trained adapter loads as hf:runs/NAME/policy in every other command.",
    )
    commands = bon.add_subparsers(title="bon commands", metavar="BON_COMMAND")
    _add_sample(commands, HelpFormatter)
    _add_train(commands, HelpFormatter)
    _add_eval(commands, HelpFormatter)
    bon.set_defaults(handler=lambda args: bon.print_help())


def _add_sample(commands, HelpFormatter) -> None:
    from dln.cli.common import add_model_arguments

    sample = commands.add_parser(
        "sample",
        formatter_class=HelpFormatter,
        help="Best-of-N: sample n completions, return the best by a reward",
        description='Prints one JSON object per prompt: {"prompt", "best", "reward", "candidates": '
        '[{"text", "reward"}, ...]}.',
    )
    add_model_arguments(sample)
    sample.add_argument("prompts", nargs="+", help="prompts (raw text, continued as is unless --chat)")
    sample.add_argument("-n", type=int, default=8, help="samples per prompt (N)")
    sample.add_argument(
        "--reward", default="vader", help="vader, length, hf-classifier:<dir>, module:function"
    )
    sample.add_argument("--max-tokens", type=int, default=40, help="new tokens per sample")
    sample.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    sample.add_argument("--seed", type=int, default=None, help="seed (seeded samples are cached)")
    sample.add_argument("--chat", action="store_true", help="send each prompt as a chat user turn")
    sample.set_defaults(handler=run_sample)


def _add_train(commands, HelpFormatter) -> None:
    from dln.cli.common import config_epilog
    from reasoning.bon.config import VBoNConfig

    train = commands.add_parser(
        "train",
        formatter_class=HelpFormatter,
        help="vBoN (or the KL-RL baseline) fine-tuning of a LoRA policy",
        description="Train with reward log F(r) and KL coefficient 1/(N-1) (objective vbon) or the raw "
        "reward with kl_coef (objective kl_rl). Resumes from --out's last checkpoint.",
        epilog=config_epilog(VBoNConfig),
    )
    train.add_argument("--config", help="YAML config (see configs/bon/)")
    train.add_argument("--out", required=True, help="run directory (adapter: OUT/policy)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(handler=run_train, accepts_overrides=True)


def _add_eval(commands, HelpFormatter) -> None:
    evaluate = commands.add_parser(
        "eval",
        formatter_class=HelpFormatter,
        help="mean reward and KL(π || π_ref) of a trained run, or of the reference and BoN",
        description='Prints one JSON object per point: {"name", "reward", "kl", "samples"}. With --run: the '
        "trained policy (k samples per prompt). With --reference: the reference and BoN for each --bon N.",
    )
    evaluate.add_argument("--run", help="run directory of dln bon train")
    evaluate.add_argument("--reference", action="store_true", help="evaluate the reference and BoN-N")
    evaluate.add_argument(
        "--bon", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="N values (--reference)"
    )
    evaluate.add_argument("--prompts", default="reviews", help="`reviews` (its test split) or a JSONL file")
    evaluate.add_argument("--limit", type=int, default=32, help="first N prompts (0: all)")
    evaluate.add_argument("--samples", type=int, default=4, help="samples per prompt from a trained policy")
    evaluate.add_argument("--seed", type=int, default=1234, help="sampling seed")
    evaluate.set_defaults(handler=run_eval)


def run_sample(args: argparse.Namespace) -> None:
    from dln.cli.common import open_model
    from reasoning.bon.best_of_n import best_of_n
    from reasoning.bon.rewards import load_reward

    if args.n < 1 or args.temperature <= 0:
        raise DLNError("Best-of-N needs -n >= 1 and --temperature > 0 (greedy samples are all the same)")
    reward = load_reward(args.reward)
    model = open_model(args)
    prompts = [[{"role": "user", "content": p}] if args.chat else p for p in args.prompts]
    results = best_of_n(
        model,
        prompts,
        reward,
        args.n,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        seed=args.seed,
        reward_prompts=args.prompts,
    )
    for prompt, result in zip(args.prompts, results):
        candidates = [{"text": t, "reward": r} for t, r in zip(result.candidates, result.rewards)]
        print(
            json.dumps(
                {"prompt": prompt, "best": result.best, "reward": result.reward, "candidates": candidates}
            )
        )


def load_vbon_config(path: str | None, overrides: list[str], base: dict | None = None):
    from dln.config import load_config
    from reasoning.bon.config import VBoNConfig

    return load_config(VBoNConfig, path, overrides, base)


def run_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from reasoning.bon.trainer import VBoNTrainer

    config = load_vbon_config(args.config, overrides)
    if config.objective == "vbon":
        what = f"vBoN N={config.bon_n} (reward log F, β={config.beta:.3g})"
    else:
        what = f"KL-RL (raw reward, β={config.beta:.3g})"
    samples = config.steps * config.grad_accum * config.prompts_per_step * config.samples_per_prompt
    print(
        f"dln bon train: {what}, reward {config.reward}, {config.steps} updates, {samples} policy samples of "
        f"{config.max_new_tokens} tokens -> {args.out}",
        flush=True,
    )
    adapter = VBoNTrainer(config, args.out, progress=not args.quiet).fit()
    print(json.dumps({"adapter": str(adapter), "load_with": f"hf:{adapter}"}))


def run_eval(args: argparse.Namespace) -> None:
    from reasoning.bon.evaluate import evaluate_policy, evaluate_reference_bon
    from reasoning.bon.rewards import load_reward
    from reasoning.bon.trainer import ADAPTER, load_prompts
    from reasoning.finetune.policy import Policy

    if bool(args.run) == bool(args.reference):
        raise DLNError("give either --run runs/NAME (a trained policy) or --reference (reference and BoN)")
    config = load_vbon_config(None, []) if args.reference else _saved_config(args.run)
    prompts = load_prompts(args.prompts, "test")
    prompts = prompts[: args.limit] if args.limit else prompts
    reward = load_reward(config.reward)
    policy = Policy.load(config, adapters=(ADAPTER,))
    if args.reference:
        points = evaluate_reference_bon(
            policy, prompts, reward, config, m=max(args.bon), ns=tuple(args.bon), seed=args.seed
        )
    else:
        adapter = Path(args.run) / ADAPTER
        if not (adapter / "adapter_config.json").is_file():
            raise DLNError(
                f"{args.run} has no trained adapter yet; finish it with dln bon train --out {args.run}"
            )
        policy.load_adapter_weights(ADAPTER, adapter)
        points = [
            evaluate_policy(policy, ADAPTER, args.run, prompts, reward, config, args.samples, args.seed)
        ]
    for point in points:
        print(json.dumps(point.row()))


def _saved_config(run: str):
    """The config a `dln bon train` run recorded in its run directory (`config.yaml`)."""
    from dln.rundir import RunDir

    run_dir = RunDir(run)
    if not run_dir.config_file.is_file():
        raise DLNError(f"{run} is not a dln bon train run (no {RunDir.CONFIG}); train one with dln bon train")
    return load_vbon_config(None, [], run_dir.config())
