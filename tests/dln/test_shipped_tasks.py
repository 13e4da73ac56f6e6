"""The task data shipped under dln/data/tasks: shape, label sets and split hygiene (no model needed)."""

import json

import pytest

from dln.data.shipped import SPLITS, list_tasks, task_dir

BIG_BENCH = {"navigate", "date_understanding", "logical_deduction", "hyperbaton"}
TOY = {"topic", "sentiment"}
TEST_SIZE = {**dict.fromkeys(BIG_BENCH, 250), **dict.fromkeys(TOY, 100)}


def load(task: str, split: str) -> list[dict]:
    with (task_dir(task) / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_list_tasks_holds_every_documented_task():
    assert set(list_tasks()) == BIG_BENCH | TOY


def test_unknown_task_names_itself_and_the_known_ones():
    with pytest.raises(ValueError, match="no_such_task.*navigate"):
        task_dir("no_such_task")


@pytest.mark.parametrize("task", sorted(BIG_BENCH | TOY))
def test_splits_are_well_formed_and_disjoint(task):
    splits = {split: load(task, split) for split in SPLITS}
    for split, examples in splits.items():
        assert examples, f"{task}/{split} is empty"
        for example in examples:
            assert set(example) == {"input", "target", "labels"}
            assert isinstance(example["input"], str) and example["input"].strip()
            assert example["target"] in example["labels"], (task, split, example)
            assert len(set(example["labels"])) == len(example["labels"]) >= 2
    assert len(splits["test"]) == TEST_SIZE[task]
    inputs = {split: [e["input"] for e in examples] for split, examples in splits.items()}
    for split, texts in inputs.items():
        assert len(set(texts)) == len(texts), f"{task}/{split} repeats an input"
    assert not set(inputs["train"]) & set(inputs["dev"])
    assert not set(inputs["train"]) & set(inputs["test"])
    assert not set(inputs["dev"]) & set(inputs["test"])
