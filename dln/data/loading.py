"""Tasks as `datasets.Dataset` splits: a shipped task by name, or the user's JSONL/CSV files.

Every row has `input` and `target`, and optionally `labels` (its own label set, as multiple-choice rows
carry). A task's label set is the union of row label sets in first-seen order, or the set of targets when no
row has labels. Problems are reported with the file, the line and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dln.data.shipped import task_dir
from dln.errors import DLNError

REQUIRED = ("input", "target")


@dataclass
class Task:
    name: str
    train: object  # datasets.Dataset
    dev: object
    test: object | None
    labels: list[str]

    def split(self, name: str):
        split = {"train": self.train, "dev": self.dev, "test": self.test}.get(name)
        if split is None:
            raise DLNError(f"task {self.name} has no {name} split; give it with --{name} FILE")
        return split


def load_task(
    name: str | None = None, *, train: str | None = None, dev: str | None = None, test: str | None = None
) -> Task:
    """A shipped task (`name`), or user files; user files replace the shipped splits they name."""
    files: dict[str, str | None] = {"train": train, "dev": dev, "test": test}
    if name:
        try:
            directory = task_dir(name)
        except ValueError as err:
            raise DLNError(f"{err}; or pass your own files with --train/--dev/--test") from err
        for split in files:
            files[split] = files[split] or str(directory / f"{split}.jsonl")
    if not files["train"]:
        raise DLNError("no training data: give --task NAME (a shipped task) or --train FILE (JSONL or CSV)")
    if not files["dev"]:
        raise DLNError("no dev data: give --dev FILE; the dev split picks the best prompt during training")
    splits = {split: read_split(path) if path else None for split, path in files.items()}
    labels = label_set(list(splits.values()))
    for split, path in files.items():
        if splits[split] is not None:
            check_targets(splits[split], labels, path)
    return Task(
        name or user_task_name(files["train"]), splits["train"], splits["dev"], splits["test"], labels
    )


def user_task_name(path: str) -> str:
    """A user task's name: its directory's name when the files are called after their split
    (`mytask/train.jsonl` -> `mytask`), else the file's stem (`reviews_train.jsonl` -> `reviews_train`)."""
    file = Path(path)
    return file.parent.resolve().name if file.stem in ("train", "dev", "test") else file.stem


def read_split(path: str):
    """Read one JSONL or CSV file into a Dataset, checking it is non-empty and has the required columns."""
    import datasets

    file = Path(path)
    if not file.is_file():
        raise DLNError(f"data file {path} does not exist")
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv"}.get(file.suffix.lower())
    if kind is None:
        raise DLNError(f"{path}: unsupported file type {file.suffix!r}; use .jsonl or .csv")
    if file.stat().st_size == 0 or not file.read_text(encoding="utf-8").strip():
        raise DLNError(f"{path} is empty; it needs one example per line with fields input and target")
    datasets.disable_progress_bars()
    try:
        data = datasets.load_dataset(kind, data_files=str(file), split="train")
    except Exception as err:  # datasets wraps parser errors in several types
        raise DLNError(
            f"{path}: cannot be read as {kind.upper()} ({_first_line(err)}); each line must be one "
            f"JSON object with input and target"
        ) from err
    missing = [c for c in REQUIRED if c not in data.column_names]
    if missing:
        raise DLNError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(data.column_names)}); "
            f"every example needs input and target"
        )
    first_line = 2 if kind == "csv" else 1
    for index, row in enumerate(data):
        for column in REQUIRED:
            if row[column] is None or str(row[column]).strip() == "":
                raise DLNError(f"{path}, line {index + first_line}: empty {column}")
    data = data.map(lambda row: {"input": str(row["input"]), "target": str(row["target"]).strip()})
    return data.add_column("line", list(range(first_line, first_line + len(data))))


def label_set(splits: list) -> list[str]:
    labels: dict[str, None] = {}
    for split in splits:
        if split is not None and "labels" in split.column_names:
            for row_labels in split["labels"]:
                labels.update(dict.fromkeys(row_labels or []))
    if not labels:
        for split in splits:
            if split is not None:
                labels.update(dict.fromkeys(split["target"]))
    return list(labels)


def check_targets(split, labels: list[str], path: str) -> None:
    has_row_labels = "labels" in split.column_names
    for row in split:
        allowed = (row["labels"] or labels) if has_row_labels else labels
        if row["target"] not in allowed:
            raise DLNError(
                f"{path}, line {row['line']}: target {row['target']!r} is not in the label set "
                f"{allowed}; fix the target or the row's labels"
            )


def example_labels(split, default: list[str]) -> list[list[str]]:
    """Each row's label set (its own `labels`, else the task's)."""
    if "labels" not in split.column_names:
        return [default] * len(split)
    return [row or default for row in split["labels"]]


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__
