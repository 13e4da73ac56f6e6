"""Held-out accuracy of base / SFT / RFT / GRPO / ELBO / IWAE / forward-KL runs on one budget, as a table.

Every method trains from `configs/reason/<objective>.yaml` with the same budget overrides: the same
number of updates, questions per update and traces per question (the ELBO draws K = 1), the same seed and
learning rate; the variational runs also spend `--warmup` SFT updates warming q up on gold traces with the
answer hint. Runs go one after another in this process; each writes `<out>/<method>/` and one line of
`<out>/results.jsonl`, and a method already in that file is not run again (delete it to redo).

Example:
    OMP_NUM_THREADS=1 python benchmarks/reasoning_table.py --steps 8 --batch-size 4 --k 4 \
        --out runs/reason-bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ["base", "sft", "rft", "grpo", "grpo_trl", "elbo", "iwae", "forward_kl"]
LABELS = {
    "base": "base model",
    "sft": "SFT (gold traces)",
    "rft": "RFT",
    "grpo": "GRPO (in-loop)",
    "grpo_trl": "GRPO (TRL GRPOTrainer)",
    "elbo": "ELBO (K=1)",
    "iwae": "IWAE",
    "forward_kl": "forward KL + multi-trace",
}


def run_method(method: str, args: argparse.Namespace, out: Path) -> dict:
    from dln.config import load_config
    from reasoning.reason.config import ReasonConfig
    from reasoning.reason.evaluate import evaluate
    from reasoning.reason.trainer import ReasonTrainer

    start = time.time()
    if method == "base":
        from reasoning.finetune.policy import Policy, PolicyConfig
        from reasoning.reason.tasks import chain_task

        policy = Policy.load(PolicyConfig(bf16=True), adapters=("policy",))
        result = evaluate(
            policy,
            chain_task(seed=0).test,
            adapter=None,
            limit=args.eval_size,
            max_new_tokens=args.max_new_tokens,
        )
        return {"method": method, **result, "train_seconds": 0.0, "seconds": round(time.time() - start, 1)}
    budget = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        eval_size=args.eval_size,
        lr=args.lr,
        max_new_tokens=args.max_new_tokens,
        posterior_warmup_steps=args.warmup,
        progress=False,
    )
    if method != "elbo" and method != "sft":
        budget["k"] = args.k
    config = load_config(ReasonConfig, Path(args.configs) / f"{method}.yaml", budget)
    if method == "grpo_trl":
        from reasoning.reason.grpo_trl import train_grpo_trl

        summary = train_grpo_trl(config, out / method)
    else:
        summary = ReasonTrainer(config, out / method).fit()
    return {
        "method": method,
        **summary["eval"],
        "train_seconds": summary["train_seconds"],
        "seconds": round(time.time() - start, 1),
        "k": config.k if method != "sft" else 0,
        "warmup": config.warmup,
        "last": summary.get("last", {}),
    }


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Budget: {args.steps} updates x {args.batch_size} questions, K={args.k} traces (ELBO: 1), "
        f"lr {args.lr}, max {args.max_new_tokens} new tokens, bf16 autocast, variational runs "
        f"+ {args.warmup} q warm-up updates; held-out: first {args.eval_size} test questions, greedy.",
        "",
        "| method | accuracy (strict) | accuracy (last number) | completion tokens | train s | total s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS.get(r['method'], r['method'])} | {100 * r['accuracy']:.1f}% | "
            f"{100 * r['accuracy_lenient']:.1f}% | {r['trace_len']:.1f} | {r['train_seconds']:.0f} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS)
    )
    parser.add_argument("--steps", type=int, default=8, help="updates per method")
    parser.add_argument("--batch-size", type=int, default=4, help="questions per update")
    parser.add_argument("--k", type=int, default=4, help="traces per question (RFT, GRPO, IWAE, forward KL)")
    parser.add_argument("--warmup", type=int, default=6, help="q warm-up updates of the variational runs")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--eval-size", type=int, default=100, help="held-out questions")
    parser.add_argument("--configs", default="configs/reason")
    parser.add_argument("--out", default="runs/reason-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.jsonl"
    done = {}
    if results_file.exists():
        done = {r["method"]: r for r in map(json.loads, results_file.read_text().splitlines()) if r}
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if method not in done:
            done[method] = run_method(method, args, out)
            with results_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(done[method]) + "\n")
            print(json.dumps(done[method]), flush=True)
        rows.append(done[method])
    print(table(rows, args))


if __name__ == "__main__":
    main()
