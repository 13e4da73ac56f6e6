"""Options and I/O shared by subcommands: the model URI, the cache switches, JSON-lines in and out."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

from dln.data.jsonl import read_jsonl  # noqa: F401  (re-exported for the subcommands)


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


def print_jsonl(records: Iterable[dict]) -> None:
    for record in records:
        print(json.dumps(record, ensure_ascii=False), flush=True)
