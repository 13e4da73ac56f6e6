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
from dln.train import PromptTrainer, accuracy, split_batch
from dln.train_config import TrainConfig, apply_preset

METHODS = ("zero_shot", "icl", "dln1", "dln2")


def finished_record(out: Path, test_limit: int) -> dict | None:
    record_file = out / "bench.json"
    if not record_file.exists():
        return None
    record = json.loads(record_file.read_text())
    return record if record["test_limit"] == test_limit else None


def run_one(
    model,
    task: str,
    method: str,
    seed: int,
    preset: str,
    test_limit: int,
    out: Path,
    keys: dict | None = None,
) -> dict:
    """Train (or resume) one run and measure its test accuracy; bench.json keeps both with the wall time."""
    config_dir = "dln2" if method == "dln2" else "dln1"
    keys = {key: per_run(value, task, seed) for key, value in (keys or {}).items()}
    values = apply_preset(
        read_yaml(f"configs/{config_dir}/{task}.yaml"),
        {"preset": preset, "method": method, "seed": seed, **keys},
    )
    config = build_config(TrainConfig, values)
    trainer = PromptTrainer(config, str(out), model=model, progress=False)
    program = trainer.fit()
    start = time.perf_counter()
    test = trainer.task.test.select(range(min(test_limit or len(trainer.task.test), len(trainer.task.test))))
    test_accuracy = accuracy(program, split_batch(test, trainer.task.labels))
    # training time summed over every process that trained the run (it may have been resumed), then the test
    # (a checkpoint written before runs kept their time has none: its training time is unknown, counted as 0)
    seconds = trainer.run.load_checkpoint().get("seconds", 0.0) + time.perf_counter() - start
    record = {"accuracy": test_accuracy, "seconds": seconds, "test_limit": test_limit}
    atomic_write_json(out / "bench.json", record)
    return record


def per_run(value: str, task: str, seed: int) -> str:
    """A `--set` value with `{task}` and `{seed}` filled in (init_from=runs/d1/{task}-dln1-{seed})."""
    return value.replace("{task}", task).replace("{seed}", str(seed)) if isinstance(value, str) else value


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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config key for every run (e.g. held_out_ranking=true; {task} and {seed} are filled in, "
        "as in init_from=runs/d1/{task}-dln1-{seed}); use its own --out",
    )
    parser.add_argument("--model", default="hf:default", help="model URI for every run (e.g. hf:NAME)")
    parser.add_argument("--test-limit", type=int, default=0, help="first N test examples (0: all)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument(
        "--report", action="store_true", help="print the table of the finished runs only; train nothing"
    )
    args = parser.parse_args()

    keys = {"model": args.model, **dict(item.split("=", 1) for item in args.set)}
    model = None if args.report else load_model(args.model, **build_config(TrainConfig, keys).model_options())
    rows = []
    for task in args.tasks:
        cells = []
        for method in args.methods:
            outs = {seed: Path(args.out) / f"{task}-{method}-{seed}" for seed in args.seeds}
            records = {seed: finished_record(out, args.test_limit) for seed, out in outs.items()}
            if not args.report:
                for seed, out in outs.items():
                    records[seed] = records[seed] or run_one(
                        model, task, method, seed, args.preset, args.test_limit, out, keys
                    )
            done = {seed: r for seed, r in records.items() if r is not None}
            if not done:
                cells.append("not run")
                continue
            accs = [r["accuracy"] for r in done.values()]
            spread = f" ± {statistics.stdev(accs):.3f}" if len(accs) > 1 else f" (seed {next(iter(done))})"
            seconds = statistics.mean(r["seconds"] for r in done.values())
            cells.append(f"{statistics.mean(accs):.3f}{spread} ({seconds:.0f} s)")
            devs = [dev_initial_and_best(outs[seed]) for seed in done]
            print(
                f"{task:20s} {method:10s} seeds {list(done)} test "
                + " ".join(f"{a:.3f}" for a in accs)
                + "  dev initial->restored "
                + " ".join(f"{d0:.3f}->{d1:.3f}" for d0, d1 in devs),
                flush=True,
            )
        rows.append(f"| {task} | " + " | ".join(cells) + " |")
    print(
        f"\nTest accuracy, mean ± std over the finished ones of seeds {args.seeds}, preset {args.preset}, "
        f"(mean wall time per run), {args.model}:\n"
    )
    print("| task | " + " | ".join(args.methods) + " |")
    print("|---" * (len(args.methods) + 1) + "|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
