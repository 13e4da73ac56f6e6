"""TFB against MAP, MC-dropout and temperature scaling: ACC, ECE, NLL, Brier, mean over seeds, and timings.

For every config and seed: fine-tune a MAP LoRA adapter (configs/tfb/<name>.yaml, its `task`, seed changed),
search σ on an anchor set (--anchor-size training inputs from --anchor-offset on, by default the ones after
the config's `train_limit` examples the MAP was trained on; unlabelled, labelled by the MAP), then evaluate
on the first --test-limit test examples:
- MAP: the adapter alone; MC-dropout: LoRA dropout on at inference, S passes;
- temperature scaling: T fitted on the first --dev-limit dev examples by NLL, applied to the MAP;
- TFB: S weight samples at the searched σ.
Timing ratios: σ-search time / MAP prediction time on the test subset, and TFB prediction time / MAP's.
Each (task, seed) record is appended to --results as it finishes, so an interrupted run keeps its rows;
rerunning skips the records already there.

Example:
    OMP_NUM_THREADS=1 python benchmarks/tfb_table.py --tasks hyperbaton-overfit navigate-overfit --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

METHODS = ("MAP", "MC-dropout", "Temp. scaling", "TFB")


def fit_map_and_sigma(task: str, seed: int, args):
    """Train (or reuse) the MAP adapter, then search TFB's sigma on the anchor examples."""
    from dln.config import load_config
    from dln.data.loading import load_task
    from reasoning.tfb.bayesian_lora import BayesianLoRA
    from reasoning.tfb.config import MapTrainConfig
    from reasoning.tfb.map_train import train_map

    overrides = {"seed": seed, **({"steps": args.steps} if args.steps else {})}
    config = load_config(MapTrainConfig, Path("configs/tfb") / f"{task}.yaml", overrides)  # task: config name
    out = Path(args.runs) / f"{task}-{seed}"
    if args.reuse and (out / "adapter" / "tfb_task.json").is_file():  # a finished MAP run, same config
        trained = json.loads((out / "adapter" / "tfb_task.json").read_text())
    else:
        trained = train_map(config, out, progress=False)
    bayes = BayesianLoRA.load(out)
    data = load_task(config.task)
    offset = config.train_limit if args.anchor_offset < 0 else args.anchor_offset
    anchor = list(data.train["input"])[offset : offset + args.anchor_size]
    search = bayes.fit(
        anchor,
        metric=args.metric,
        tolerance=args.tolerance,
        samples=args.search_samples,
        sigma_min=args.sigma_min,
        sigma_max=args.sigma_max,
        steps=args.search_steps,
        seed=seed,
    )
    return config, trained, bayes, data, [offset, len(anchor)], search


def predictions(bayes, data, seed: int, args) -> tuple[dict, dict, float, np.ndarray]:
    """Test probabilities of every method (temperature scaling fitted on dev), their times, T, labels."""
    from dln.data.loading import example_labels
    from reasoning.tfb.baselines import fit_temperature, scale

    def split(name: str, limit: int):
        rows = data.split(name).select(range(min(limit, len(data.split(name)))))
        encoded = bayes.scorer.encode(list(rows["input"]))
        targets = np.array([data.labels.index(t) for t in rows["target"]])
        return encoded, example_labels(rows, data.labels), targets

    test_x, test_labels, test_y = split("test", args.test_limit)
    dev_x, dev_labels, dev_y = split("dev", args.dev_limit)
    methods = {
        "map": ("MAP", lambda: bayes.predict_proba(encoded=test_x, row_labels=test_labels, samples=0)),
        "mc": (
            "MC-dropout",
            lambda: bayes.mc_dropout_proba(
                encoded=test_x, row_labels=test_labels, samples=args.samples, seed=seed
            ),
        ),
        "tfb": (
            "TFB",
            lambda: bayes.predict_proba(
                encoded=test_x, row_labels=test_labels, samples=args.samples, seed=seed
            ),
        ),
    }
    probs, timed = {}, {}
    for key, (name, fn) in methods.items():
        start = time.time()
        probs[name] = fn()
        timed[key] = time.time() - start
    dev_probs = bayes.predict_proba(encoded=dev_x, row_labels=dev_labels, samples=0)
    temperature = fit_temperature(np.log(np.maximum(dev_probs, 1e-300)), dev_y)
    probs["Temp. scaling"] = scale(np.log(np.maximum(probs["MAP"], 1e-300)), temperature)
    return probs, timed, temperature, test_y


def run_one(task: str, seed: int, args) -> dict:
    from reasoning.tfb.metrics import all_metrics

    config, trained, bayes, data, anchor, search = fit_map_and_sigma(task, seed, args)
    probs, timed, temperature, test_y = predictions(bayes, data, seed, args)
    return {
        "task": task,
        "seed": seed,
        "sigma": search.sigma,
        "temperature": temperature,
        "train_seconds": trained["train_seconds"],
        "search_seconds": bayes.search["seconds"],
        "search_evaluations": len(search.trace) + 1,
        "anchor": anchor,
        "config": {
            k: getattr(config, k) for k in ("train_limit", "steps", "batch_size", "lr", "lora_dropout")
        },
        "map_seconds": timed["map"],
        "tfb_seconds": timed["tfb"],
        "mc_seconds": timed["mc"],
        "n_test": len(test_y),
        "note": search.note,
        "metrics": {m: all_metrics(probs[m], test_y) for m in METHODS},
    }


def table(records: list[dict], samples: int) -> str:
    lines = ["| task | method | ACC | ECE | NLL | Brier | seeds |", "|---|---|---:|---:|---:|---:|---:|"]
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        for method in METHODS:
            mean = {
                k: np.mean([r["metrics"][method][k] for r in rows]) for k in ("acc", "ece", "nll", "brier")
            }
            name = f"{method} (S={samples})" if method in ("TFB", "MC-dropout") else method
            lines.append(
                f"| {task} | {name} | {mean['acc']:.3f} | {mean['ece']:.3f} | {mean['nll']:.3f} | "
                f"{mean['brier']:.3f} | {len(rows)} |"
            )
    lines.append("")
    lines.append(
        "| task | seed | σ | T | n test | σ search / MAP predict | TFB S / MAP predict | MC-dropout / MAP |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in records:
        base = r["map_seconds"]
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['sigma']:.3g} | {r['temperature']:.2f} | "
            f"{r['n_test']} | {r['search_seconds'] / base:.1f}x ({r['search_seconds']:.0f} s) | "
            f"{r['tfb_seconds'] / base:.1f}x | {r['mc_seconds'] / base:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks", nargs="+", default=["hyperbaton-overfit", "navigate-overfit"], help="configs/tfb/NAME.yaml"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=0, help="MAP training steps (0: the config's)")
    parser.add_argument("--samples", type=int, default=10, help="S for TFB and MC-dropout")
    parser.add_argument("--anchor-size", type=int, default=48)
    parser.add_argument("--anchor-offset", type=int, default=-1, help="first anchor input (-1: train_limit)")
    parser.add_argument("--sigma-min", type=float, default=1e-4)
    parser.add_argument("--sigma-max", type=float, default=1.0)
    parser.add_argument("--search-samples", type=int, default=2)
    parser.add_argument("--search-steps", type=int, default=4)
    parser.add_argument("--metric", default="acc", choices=["acc", "nll"])
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--test-limit", type=int, default=40)
    parser.add_argument("--dev-limit", type=int, default=40)
    parser.add_argument("--runs", default="runs/tfb-bench", help="where the adapters are written")
    parser.add_argument("--results", default="runs/tfb-bench/results.jsonl")
    parser.add_argument("--reuse", action="store_true", help="reuse MAP adapters already under --runs")
    args = parser.parse_args()

    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    for task in args.tasks:
        for seed in args.seeds:
            if any(r["task"] == task and r["seed"] == seed for r in done):
                continue
            record = run_one(task, seed, args)
            done.append(record)
            with results.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(
                f"{task} seed {seed}: sigma={record['sigma']:.3g} "
                + " ".join(f"{m}={record['metrics'][m]['ece']:.3f}" for m in METHODS)
                + " (ECE)",
                flush=True,
            )
    print(table([r for r in done if r["task"] in args.tasks and r["seed"] in args.seeds], args.samples))


if __name__ == "__main__":
    main()
