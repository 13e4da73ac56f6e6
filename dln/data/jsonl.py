"""JSON-lines input: one object per line, checked for its required fields; errors name file and line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

from dln.errors import DLNError


def read_numbered_jsonl(path: str, required: tuple[str, ...], hint: str = "") -> Iterator[tuple[int, dict]]:
    """(line number, record) of a JSON-lines file (`-` is stdin); blank lines are skipped.

    Args:
        hint: appended to the errors, e.g. what one line should look like.
    """
    if path != "-" and not Path(path).is_file():
        raise DLNError(f"input file {path} does not exist{hint and '; ' + hint}")
    handle = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    name = "stdin" if path == "-" else path
    try:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DLNError(
                    f"{name}, line {number}: not valid JSON ({err.msg}); each line must be one JSON object"
                    f"{hint and '; ' + hint}"
                ) from None
            missing = [f for f in required if not isinstance(record, dict) or f not in record]
            if missing:
                raise DLNError(
                    f"{name}, line {number}: missing field(s) {', '.join(missing)}; each line needs "
                    f"{', '.join(required)}{hint and '; ' + hint}"
                )
            yield number, record
    finally:
        if handle is not sys.stdin:
            handle.close()


def read_jsonl(path: str, required: tuple[str, ...], hint: str = "") -> Iterator[dict]:
    """The records of a JSON-lines file (`-` is stdin), each checked for the required fields."""
    for _, record in read_numbered_jsonl(path, required, hint):
        yield record
