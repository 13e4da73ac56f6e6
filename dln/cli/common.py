"""Options and I/O shared by subcommands: the model URI, the cache switches, JSON-lines in and out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from dln.errors import DLNError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="hf:default",
        help="model URI: hf:default, hf:<path>, vllm:<path> or openai:<model>@<base_url>",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="bypass the request cache (also: DLN_CACHE=off)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        metavar="PATH",
        help="request-cache file (default: $DLN_CACHE or $DLN_HOME/cache.sqlite)",
    )


def open_model(args: argparse.Namespace):
    from dln.lm import load_model

    return load_model(args.model, cache=False if args.no_cache else args.cache)


def read_jsonl(path: str, required: tuple[str, ...]) -> Iterator[dict]:
    """Records of a JSON-lines file (`-` is stdin), each checked for the required fields."""
    handle = sys.stdin if path == "-" else _open(path)
    name = "stdin" if path == "-" else path
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DLNError(
                f"{name}, line {number}: not valid JSON ({err.msg}); each line must be one JSON object"
            ) from None
        missing = [f for f in required if not isinstance(record, dict) or f not in record]
        if missing:
            raise DLNError(
                f"{name}, line {number}: missing field(s) {', '.join(missing)}; each line needs "
                f"{', '.join(required)}"
            )
        yield record


def _open(path: str):
    if not Path(path).is_file():
        raise DLNError(f"input file {path} does not exist")
    return open(path, encoding="utf-8")


def print_jsonl(records: Iterable[dict]) -> None:
    for record in records:
        print(json.dumps(record, ensure_ascii=False), flush=True)
