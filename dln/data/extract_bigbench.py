"""Rebuild the shipped BIG-bench tasks (`dln/data/tasks/<task>/*.jsonl`) from the bigbench sdist.

A maintenance script: the package never imports it at run time and does not depend on `bigbench`.

Example (the sdist is about 360 MB; only four task.json files are extracted):
    pip download bigbench==1.0.0 --no-deps --no-binary :all: -d sdist
    tar xzf sdist/bigbench-1.0.0.tar.gz -C sdist \
        bigbench-1.0.0/bigbench/benchmark_tasks/{navigate,date_understanding,hyperbaton}/task.json \
        bigbench-1.0.0/bigbench/benchmark_tasks/logical_deduction/seven_objects/task.json
    python dln/data/extract_bigbench.py sdist/bigbench-1.0.0

Formatting follows the DLN paper's preparation of these tasks (the question text with "Options:" listed
under it), with one change: the target of a lettered task is the bare letter ("A"), while the input lists
"(A) ...", so that every label is a single token for a classifier that scores the label set.

Split recipe, per task (all randomness from one `random.Random(42)`):
1. Examples that share a context (logical_deduction: the paragraph; date_understanding: the text before
   the question) form a group, so that no context appears in two splits; other examples are their own
   group. Groups are shuffled, and hyperbaton is cut to its first 1,000 examples.
2. The options of lettered tasks are permuted (BIG-bench mostly lists the gold answer first).
3. Splits are filled in the order test (250), dev (min(200, rest // 2)), train (the rest, at most 500)
   with whole groups; the group that crosses a split's size is cut and its remainder dropped.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path

SEED = 42
TEST_SIZE = 250
DEV_MAX = 200
TRAIN_MAX = 500
LETTERS = "ABCDEFG"
NAVIGATE_PREFIX = "If you follow these instructions, do you return to the starting point? "
HYPERBATON_PREFIX = "Which sentence has the correct adjective order:"
LOGICAL_PREFIX = (
    "The following paragraphs each describe a set of seven objects arranged in a fixed order. "
    "The statements are logically consistent within each paragraph. "
)

Example = dict[str, object]


def gold_and_options(raw: dict) -> tuple[list[str], int]:
    options = list(raw["target_scores"])
    golds = [i for i, key in enumerate(options) if raw["target_scores"][key] == 1]
    assert len(golds) == 1, raw
    return options, golds[0]


def lettered(question: str, options: list[str], gold: int, rng: random.Random) -> Example:
    """A multiple-choice example with shuffled options "(A) ..." and the bare letter as target."""
    order = list(range(len(options)))
    rng.shuffle(order)
    letters = LETTERS[: len(options)]
    listed = "\n".join(f"({letter}) {options[i]}" for letter, i in zip(letters, order, strict=True))
    return {
        "input": f"{question}\nOptions:\n{listed}",
        "target": letters[order.index(gold)],
        "labels": list(letters),
    }


def navigate(raw: dict, rng: random.Random) -> Example:
    options, gold = gold_and_options(raw)
    answer = {"True": "Yes", "False": "No"}[options[gold]]
    return {
        "input": f"{NAVIGATE_PREFIX}{raw['input']}\nOptions:\n- Yes\n- No",
        "target": answer,
        "labels": ["Yes", "No"],
    }


def date_understanding(raw: dict, rng: random.Random) -> Example:
    options, gold = gold_and_options(raw)
    return lettered(raw["input"], options, gold, rng)


def hyperbaton(raw: dict, rng: random.Random) -> Example:
    # raw input: 'Which sentence has the correct adjective order: a " <sentence a> " b " <sentence b> " ?'
    parts = raw["input"].split('"')
    assert len(parts) == 5 and parts[0].startswith(HYPERBATON_PREFIX), raw["input"]
    sentences = {"a": parts[1].strip(), "b": parts[3].strip()}
    options, gold = gold_and_options(raw)
    return lettered(HYPERBATON_PREFIX, [sentences[key] for key in options], gold, rng)


def logical_deduction(raw: dict, rng: random.Random) -> Example:
    options, gold = gold_and_options(raw)
    options = [option.removesuffix(".") for option in options]  # BBH lists the options without periods
    return lettered(LOGICAL_PREFIX + raw["input"], options, gold, rng)


# task name -> (task.json under benchmark_tasks, converter, group key, maximum number of examples)
TASKS: dict[str, tuple[str, Callable[[dict, random.Random], Example], Callable[[dict], str], int | None]] = {
    "navigate": ("navigate", navigate, lambda raw: raw["input"], None),
    "date_understanding": (
        "date_understanding",
        date_understanding,
        lambda raw: raw["input"].rsplit("What is the date", 1)[0],
        None,
    ),
    "logical_deduction": (
        "logical_deduction/seven_objects",
        logical_deduction,
        lambda raw: raw["input"],
        None,
    ),
    "hyperbaton": ("hyperbaton", hyperbaton, lambda raw: raw["input"], 1000),
}


def take(groups: list[list[Example]], size: int) -> list[Example]:
    """Pop whole groups from the front until `size` examples are taken; the crossing group is cut."""
    taken: list[Example] = []
    while groups and len(taken) < size:
        taken.extend(groups.pop(0))
    return taken[:size]


def split_task(name: str, raw_examples: list[dict]) -> dict[str, list[Example]]:
    _, convert, group_key, limit = TASKS[name]
    rng = random.Random(SEED)
    grouped: dict[str, list[dict]] = {}
    for raw in raw_examples:
        grouped.setdefault(group_key(raw), []).append(raw)
    raw_groups = list(grouped.values())
    rng.shuffle(raw_groups)
    if limit is not None:
        raw_groups = [[raw] for group in raw_groups for raw in group][:limit]
    groups = [[convert(raw, rng) for raw in group] for group in raw_groups]

    test = take(groups, TEST_SIZE)
    rest = sum(len(group) for group in groups)
    dev = take(groups, min(DEV_MAX, rest // 2))
    train = take(groups, TRAIN_MAX)
    splits = {"train": train, "dev": dev, "test": test}
    for examples in splits.values():
        rng.shuffle(examples)  # members of one group would otherwise sit next to each other
    return splits


def write_jsonl(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sdist", type=Path, help="the extracted bigbench-1.0.0 sdist (holds bigbench/)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "tasks",
        help="the tasks folder to write into (default: the package's dln/data/tasks)",
    )
    args = parser.parse_args(argv)
    root = args.sdist / "bigbench" / "benchmark_tasks"
    for name, (source, *_) in TASKS.items():
        raw = json.loads((root / source / "task.json").read_text(encoding="utf-8"))["examples"]
        splits = split_task(name, raw)
        for split, examples in splits.items():
            write_jsonl(args.out / name / f"{split}.jsonl", examples)
        sizes = ", ".join(f"{split} {len(examples)}" for split, examples in splits.items())
        print(f"{name}: {len(raw)} examples -> {sizes}")


if __name__ == "__main__":
    main()
