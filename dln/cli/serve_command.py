"""`dln serve`: the OpenAI-compatible server (`serving/`) for a base model, DLN programs, TFB adapters and
Best-of-N."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    from dln.cli import HelpFormatter

    parser = subparsers.add_parser(
        "serve",
        formatter_class=HelpFormatter,
        help="run an OpenAI-compatible server (completions, chat)",
        description="Serve a model, and trained DLN programs as extra model names, over OpenAI's API:\n"
        "/v1/models, /v1/completions (echo scoring, logprobs), /v1/chat/completions (streaming),\n"
        "/health. Concurrent requests are batched.\n"
        "Example: dln serve --model hf:default --port 8000\n"
        "         then: openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='EMPTY')",
    )
    parser.add_argument(
        "--model",
        default="hf:default",
        help="base model URI: hf:default, hf:<path> or vllm:<path> (vLLM's async engine when "
        "vllm is installed, else the HF engine)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="the base model's name in requests (default: 'default' for hf:default, else the "
        "last part of the model path)",
    )
    parser.add_argument(
        "--program",
        dest="programs",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a trained DLN program (program.json) as model NAME (repeatable)",
    )
    parser.add_argument(
        "--tfb",
        dest="tfb",
        action="append",
        default=[],
        metavar="NAME=DIR[@S]",
        help="serve a Bayesianized LoRA adapter (dln tfb fit --out DIR) as model NAME: it answers the most "
        'probable label and carries the predictive distribution in the choice ("label_probs", "samples", '
        '"sigma"), averaged over S weight samples (default 10; 0: the MAP adapter); repeatable',
    )
    parser.add_argument(
        "--reward",
        dest="rewards",
        action="append",
        default=[],
        metavar="NAME=MODULE:FUNCTION",
        help="register a Best-of-N reward (prompt, completion) -> float, used by requests with "
        'n and "reward": NAME (repeatable; built in: length, and vader when '
        "vaderSentiment is installed)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /health "
        "(default: $DLN_API_KEY; no key when neither is set)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="most requests per model call (1 serves one request at a time)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long a request waits for others to share its model call",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger request bodies are refused with 413"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for the model (0: torch's default, one per core); on a CPU shared with other "
        "jobs, 1 avoids threads waiting on each other",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log level"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> None:
    from serving.app import ServerConfig, serve

    config = ServerConfig(
        model=args.model,
        served_model_name=args.served_model_name,
        programs=args.programs,
        tfb=args.tfb,
        rewards=args.rewards,
        api_key=args.api_key or os.environ.get("DLN_API_KEY") or None,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_body_bytes=args.max_body_bytes,
        threads=args.threads,
        log_level=args.log_level,
    )
    serve(config)
