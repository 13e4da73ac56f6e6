"""Test accuracy of zero-shot, ICL, DLN-1 and DLN-2 on the shipped tasks: mean and spread over seeds.

Regenerates the README table. Every run goes through `PromptTrainer` with the task's config under
`configs/dln1/` (`configs/dln2/` for DLN-2), resized by a budget preset, into `runs/bench/`. A finished run
leaves `bench.json` (test accuracy and its own wall time), which a re-run reports instead of measuring again;
an unfinished run resumes from its checkpoint and the request cache. Runs of one table can therefore be
spread over several processes (say `--seeds 13` in one and `--seeds 42 25` in another).

    python benchmarks/dln_tasks.py --tasks topic sentiment --seeds 13 42 25 --preset light --test-limit 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from dln.atomic import atomic_write_json
from dln.config import build_config, read_yaml
from dln.lm import load_model
from dln.train import PromptTrainer, split_batch
from dln.train_config import TrainConfig, apply_preset

METHODS = ("zero_shot", "icl", "dln1", "dln2")


def run_one(
    model, task: str, method: str, seed: int, preset: str, test_limit: int, root: Path
) -> tuple[float, float]:
    """(test accuracy, wall seconds) of one run; a finished run's `bench.json` is reused, not re-measured."""
    out = root / f"{task}-{method}-{seed}"
    record_file = out / "bench.json"
    if record_file.exists():
        record = json.loads(record_file.read_text())
        if record["test_limit"] == test_limit:
            return record["accuracy"], record["seconds"]
    config_dir = "dln2" if method == "dln2" else "dln1"
    values = apply_preset(
        read_yaml(f"configs/{config_dir}/{task}.yaml"), {"preset": preset, "method": method, "seed": seed}
    )
    config = build_config(TrainConfig, values)
    start = time.perf_counter()
    trainer = PromptTrainer(config, str(out), model=model, progress=False)
    program = trainer.fit()
    test = trainer.task.test.select(range(min(test_limit or len(trainer.task.test), len(trainer.task.test))))
    batch = split_batch(test, trainer.task.labels)
    answers = program.predict(batch.inputs, batch.label_sets)
    accuracy = sum(a == t for a, t in zip(answers, batch.targets)) / len(answers)
    seconds = time.perf_counter() - start
    atomic_write_json(record_file, {"accuracy": accuracy, "seconds": seconds, "test_limit": test_limit})
    return accuracy, seconds


def dev_initial_and_best(out: Path) -> tuple[float, float]:
    """Dev accuracy of the initial prompt (iteration 0) and of the program the run restored."""
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    program = json.loads((out / "program.json").read_text())
    return first["dev_accuracy"], program["metadata"].get("dev_accuracy", first["dev_accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["topic", "sentiment", "navigate", "hyperbaton", "date_understanding", "logical_deduction"],
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[13, 42, 25])
    parser.add_argument("--preset", default="light")
    parser.add_argument("--test-limit", type=int, default=0, help="first N test examples (0: all)")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args()

    model = load_model("hf:default")
    rows = []
    for task in args.tasks:
        cells = []
        for method in args.methods:
            results = [
                run_one(model, task, method, seed, args.preset, args.test_limit, Path(args.out))
                for seed in args.seeds
            ]
            accs = [a for a, _ in results]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(
                f"{statistics.mean(accs):.3f} ± {spread:.3f} ({statistics.mean(t for _, t in results):.0f} s)"
            )
            devs = [dev_initial_and_best(Path(args.out) / f"{task}-{method}-{seed}") for seed in args.seeds]
            print(
                f"{task:20s} {method:10s} test "
                + " ".join(f"{a:.3f}" for a in accs)
                + "  dev initial->restored "
                + " ".join(f"{d0:.3f}->{d1:.3f}" for d0, d1 in devs),
                flush=True,
            )
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
    print(
        f"\nTest accuracy, mean ± std over seeds {args.seeds}, preset {args.preset}, "
        f"(mean wall time per run), default model:\n"
    )
    print("| task | " + " | ".join(args.methods) + " |")
    print("|---" * (len(args.methods) + 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
