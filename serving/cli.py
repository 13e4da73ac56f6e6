"""`dln serve`: the OpenAI-compatible server for a base model, DLN programs, TFB adapters and Best-of-N.

Registered through the `dln.commands` entry point group (`pyproject.toml`), so `dln` itself imports nothing
of `serving/`. The options come from `serving.config.ServerConfig`'s fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

DESCRIPTION = """\
Serve a model, and trained DLN programs as extra model names, over OpenAI's API:
/v1/models, /v1/completions (echo scoring, logprobs), /v1/chat/completions (streaming),
/health. Concurrent requests are batched.
Example: dln serve --model hf:default --port 8000
         then: openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='EMPTY')"""


def register(subparsers) -> None:
    from dln.cli import HelpFormatter
    from serving.config import add_config_options

    parser = subparsers.add_parser(
        "serve",
        formatter_class=HelpFormatter,
        help="run an OpenAI-compatible server (completions, chat)",
        description=DESCRIPTION,
    )
    add_config_options(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    from serving.app import serve
    from serving.config import config_from_args

    config = config_from_args(args)
    api_key = config.api_key or os.environ.get("DLN_API_KEY") or None
    serve(dataclasses.replace(config, api_key=api_key))
