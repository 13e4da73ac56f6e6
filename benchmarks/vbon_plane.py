"""Reward against KL(π || π_ref) on held-out review prompts: reference, BoN N=2..16, vBoN N=4/8, KL-RL.

Trains each config under `configs/bon/` into `runs/vbon-bench/<name>` (a finished run is reused, a killed
one resumes), evaluates every point on the same held-out prompts, prints a markdown table and writes
`benchmarks/vbon_plane.png` when matplotlib is installed.

    python benchmarks/vbon_plane.py --prompts 32 --bon-samples 16 --policy-samples 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dln.config import load_config
from reasoning.bon.config import VBoNConfig
from reasoning.bon.evaluate import RewardKL, evaluate_policy, evaluate_reference_bon
from reasoning.bon.rewards import load_reward
from reasoning.bon.trainer import ADAPTER, VBoNTrainer, load_prompts
from reasoning.finetune.policy import Policy


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["n4", "n8", "kl_rl"])
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts")
    parser.add_argument("--bon-samples", type=int, default=16, help="reference samples per prompt (max N)")
    parser.add_argument(
        "--policy-samples", type=int, default=4, help="samples per prompt of trained policies"
    )
    parser.add_argument("--out", default="runs/vbon-bench")
    parser.add_argument("--plot", default="benchmarks/vbon_plane.png")
    args = parser.parse_args()

    prompts = load_prompts("reviews", "test")[: args.prompts]
    base = load_config(VBoNConfig, f"configs/bon/{args.configs[0]}.yaml", [])
    reward = load_reward(base.reward)
    ns = tuple(n for n in (1, 2, 4, 8, 16, 32) if n <= args.bon_samples)
    reference = evaluate_reference_bon(Policy.load(base), prompts, reward, base, m=args.bon_samples, ns=ns)
    for point in reference:
        print(json.dumps(point.row()), flush=True)
    points: list[tuple[RewardKL, float]] = []
    for name in args.configs:
        config = load_config(VBoNConfig, f"configs/bon/{name}.yaml", [])
        start = time.perf_counter()
        trainer = VBoNTrainer(config, Path(args.out) / name)
        trainer.fit()
        seconds = time.perf_counter() - start
        label = f"vBoN N={config.bon_n}" if config.objective == "vbon" else f"KL-RL β={config.kl_coef}"
        point = evaluate_policy(trainer.policy, ADAPTER, label, prompts, reward, config, args.policy_samples)
        points.append((point, seconds))
        print(json.dumps({**point.row(), "train_seconds": round(seconds, 1)}), flush=True)
    print_table(reference, points, args)
    plot(reference, [p for p, _ in points], args.plot)


def print_table(reference: list[RewardKL], trained: list[tuple[RewardKL, float]], args) -> None:
    print(
        f"\nHeld-out reward (VADER) and KL(π || π_ref) in nats, {args.prompts} prompts; "
        f"BoN from {args.bon_samples} reference samples per prompt, trained policies "
        f"{args.policy_samples} samples per prompt:\n"
    )
    print("| policy | mean reward | KL (Monte Carlo) | KL closed form | train time |")
    print("|---|---|---|---|---|")
    for point in reference:
        closed = f"{point.kl_closed_form:.3f}" if point.kl_closed_form is not None else ""
        print(f"| {point.name} | {point.reward:.3f} | {point.kl:.3f} | {closed} | |")
    for point, seconds in trained:
        print(f"| {point.name} | {point.reward:.3f} | {point.kl:.3f} | | {seconds:.0f} s |")


def plot(reference: list[RewardKL], trained: list[RewardKL], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([p.kl for p in reference], [p.reward for p in reference], "o-", label="BoN (reference: N=1)")
    for p in reference:
        ax.annotate(p.name.replace("BoN ", ""), (p.kl, p.reward), fontsize=8)
    for p in trained:
        ax.plot([p.kl], [p.reward], "s", label=p.name)
    ax.set_xlabel("KL(π || π_ref), nats (Monte Carlo)")
    ax.set_ylabel("mean VADER reward, held-out prompts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
