"""The tasks shipped with the package: `dln/data/tasks/<task>/{train,dev,test}.jsonl`.

Each line is `{"input": str, "target": str, "labels": [str, ...]}` with `target` in `labels`; see
`dln/data/tasks/README.md` for the sources, label sets and split recipes.

Example:
    >>> from dln.data.shipped import list_tasks, task_dir
    >>> "navigate" in list_tasks()
    True
    >>> (task_dir("navigate") / "test.jsonl").is_file()
    True
"""

from __future__ import annotations

from pathlib import Path

TASKS_ROOT = Path(__file__).parent / "tasks"
SPLITS = ("train", "dev", "test")


def list_tasks() -> list[str]:
    """The names of the shipped tasks, sorted."""
    return sorted(p.name for p in TASKS_ROOT.iterdir() if (p / "test.jsonl").is_file())


def task_dir(name: str) -> Path:
    """The folder holding `train.jsonl`, `dev.jsonl` and `test.jsonl` of the shipped task `name`.

    Raises:
        ValueError: `name` is not a shipped task; the message lists the ones that are.
    """
    if name not in list_tasks():
        raise ValueError(f"unknown task {name!r}; shipped tasks: {', '.join(list_tasks())}")
    return TASKS_ROOT / name
