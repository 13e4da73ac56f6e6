"""Options and I/O shared by subcommands: the model URI, the cache switches, JSON-lines in and out."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable

from dln.config import config_epilog  # noqa: F401  (re-exported for the subcommands)
from dln.data.jsonl import read_jsonl  # noqa: F401  (re-exported for the subcommands)


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
