"""`ServerConfig`: everything `dln serve` takes, declared once; the command line is built from its fields.

Each field's metadata holds its `help` text and, where the option is not simply `--field-name`, its `flag`
(`--program` fills `programs`), `metavar` and `choices`. A list field is a repeatable option.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

#: request bodies over this many bytes get 413 unless `--max-body-bytes` says otherwise (1 MiB).
MAX_BODY_BYTES = 1 << 20


def option(default=None, *, help: str, factory=None, **argparse_options):
    """A config field with its command-line help (and `flag`, `metavar`, `choices` when needed)."""
    metadata = {"help": help, **argparse_options}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ServerConfig:
    """Everything `dln serve` takes; see `dln serve --help`."""

    model: str = option(
        "hf:default",
        help="base model URI: hf:default, hf:<path> or vllm:<path> (vLLM's async engine when vllm is "
        "installed, else the HF engine)",
    )
    served_model_name: str | None = option(
        help="the base model's name in requests (default: 'default' for hf:default, else the last part of "
        "the model path)"
    )
    programs: list[str] = option(
        factory=list,
        flag="--program",
        metavar="NAME=PATH",
        help="serve a trained DLN program (program.json) as model NAME (repeatable)",
    )
    tfb: list[str] = option(
        factory=list,
        metavar="NAME=DIR[@S]",
        help="serve a Bayesianized LoRA adapter (dln tfb fit --out DIR) as model NAME: it answers the most "
        'probable label and carries the predictive distribution in the choice ("label_probs", "samples", '
        '"sigma"), averaged over S weight samples (default 10; 0: the MAP adapter); repeatable',
    )
    rewards: list[str] = option(
        factory=list,
        flag="--reward",
        metavar="NAME=MODULE:FUNCTION",
        help="register a Best-of-N reward (prompt, completion) -> float, used by requests with n and "
        '"reward": NAME (repeatable; built in: length, and vader when vaderSentiment is installed)',
    )
    api_key: str | None = option(
        help="require 'Authorization: Bearer KEY' on every route but /health (default: $DLN_API_KEY; no key "
        "when neither is set)"
    )
    host: str = option("127.0.0.1", help="address to listen on")
    port: int = option(8000, help="port to listen on")
    max_batch_size: int = option(
        32,
        help="most sequences decoding together (a prompt's n samples are n sequences), and most requests per "
        "scoring or program call (1 serves one request at a time)",
    )
    batch_wait_ms: float = option(
        5.0,
        help="how long a request that finds the model idle waits for others to share its prefill or call "
        "(a request that arrives while others decode joins at the next step)",
    )
    continuous_batching: bool = option(
        True,
        flag="--no-continuous-batching",
        action="store_false",
        help="hf: generation requests join the running batch at the next decode step (default); with this "
        "flag, concurrent requests with equal sampling options share one generate call, and a request that "
        "arrives while a batch decodes waits for the whole batch",
    )
    max_body_bytes: int = option(MAX_BODY_BYTES, help="larger request bodies are refused with 413")
    threads: int = option(
        0,
        help="torch CPU threads for the model (0: torch's default, one per core); on a CPU shared with "
        "other jobs, 1 avoids threads waiting on each other",
    )
    decode_dtype: str = option(
        "",
        choices=["", "bfloat16", "float32"],
        help="dtype of the weights hf: decodes with (default: the model's); bfloat16 is several times faster "
        "on CPUs with AMX/AVX-512-bf16, and changes greedy answers slightly; log-probs stay fp32",
    )
    log_level: str = option("info", choices=["debug", "info", "warning", "error"], help="server log level")


def add_config_options(parser, cls: type = ServerConfig) -> None:
    """One command-line option per field of `cls`, typed, helped and defaulted from the field."""
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        if f.default_factory is not dataclasses.MISSING:  # a list: a repeatable option
            parser.add_argument(flag, dest=f.name, action="append", default=[], **meta)
            continue
        kind = {"int": int, "float": float}.get(str(f.type))
        parser.add_argument(flag, dest=f.name, default=f.default, **({"type": kind} if kind else {}), **meta)


def config_from_args(args, cls: type = ServerConfig):
    """The config the parsed options of `add_config_options` describe."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
