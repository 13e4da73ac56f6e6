"""Options and I/O shared by subcommands: the model URI, the cache switches, JSON-lines in and out."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from dln.errors import DLNError


def config_epilog(cls: type, extra: list[str] | None = None) -> str:
    """The `--help` epilog listing every key of a run config with its help text and default."""
    from dataclasses import MISSING, fields

    lines = ["config keys (set in the YAML file or as --key value; defaults in brackets):"]
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        shown = repr(default) if len(repr(default)) < 40 else f"(see {cls.__module__})"
        lines.append(f"  --{f.name.replace('_', '-'):<24} {f.metadata.get('help', '')} [{shown}]")
    return "\n".join(lines + (extra or []))


def config_from_cli(cls: type, path: str | None, overrides: list[str], base: dict | None = None):
    """A run config: the class defaults, then `base`, the YAML file, and the `--key value` overrides."""
    from dln.config import build_config, parse_overrides, read_yaml

    values = dict(base or {})
    values.update(read_yaml(path) if path else {})
    values.update(parse_overrides(overrides))
    return build_config(cls, values, source=path or "command line")


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
