"""Serving throughput: the micro-batched server against one-request-at-a-time serving, same machine, same run.

Starts two `dln serve` processes on loopback ports: one batched (`--max-batch-size 32`) and one that serves
one request per model call (`--max-batch-size 1`). At each concurrency level (1, 8, 32 clients) it sends
the same fixed number of greedy completion requests to each server in turn, with a time cap per run, and
prints requests/s, p50/p99 latency, errors, lost requests, and the throughput ratio batched / one-at-a-time.
Runs alternate between the two servers level by level, so background load on a shared machine hits both
alike. Greedy answers of the batched server are compared with the one-at-a-time server's.

    python benchmarks/bench_serve.py [--requests 64] [--time-cap 120] [--levels 1 8 32] [--max-tokens 16]
                                     [--threads 1]
    python benchmarks/bench_serve.py --soak 600    # by hand: 10 minutes at moderate load, memory start/end
    python benchmarks/bench_serve.py --soak 600 --mixed  # completions, streaming chat, echo scoring in turn
    python benchmarks/bench_serve.py --staggered [--late 4] [--long-tokens 128] [--stagger 0.5]
        # joining: while one long streaming request decodes, late requests arrive one by one; their time to
        # first token and latency with continuous batching (the default) and with --no-continuous-batching,
        # where a late request waits for the running batch to finish
    python benchmarks/bench_serve.py --scoring --baseline-src ../old-checkout
        # 1-token scoring requests (Microsoft DLN's: max_tokens 1, logprobs 100, ~100-token prompts) against
        # this checkout's server and, instead of the one-at-a-time server, a batched server run from another
        # checkout of the code (before a change), same machine, same run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

SUBJECTS = [
    "the sea",
    "a small town",
    "winter",
    "a lost key",
    "the first train",
    "an old library",
    "bread",
    "a mountain road",
    "the moon",
    "a garden",
    "rain at night",
    "a chess game",
    "the market",
    "a violin",
    "an empty station",
    "coffee",
]
PROMPTS = [f"Write one sentence about {s}:" for s in SUBJECTS]
#: ~100-token prompts for scoring requests, each ending in a different subject
SCORING_PROMPTS = [
    " ".join(f"Here is a short note about {t}." for t in SUBJECTS[:8]) + f" And one about {s}:"
    for s in SUBJECTS
]


def request_body(index: int, args: argparse.Namespace) -> dict:
    if args.scoring:  # Microsoft DLN's scoring call
        prompt = SCORING_PROMPTS[index % len(SCORING_PROMPTS)]
        return {"model": "default", "prompt": prompt, "max_tokens": 1, "logprobs": 100, "temperature": 0}
    prompt = PROMPTS[index % len(PROMPTS)]
    return {"model": "default", "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0}


def mixed_request(index: int, args: argparse.Namespace) -> tuple[str, dict]:
    """In turn: a greedy completion, a seeded streaming chat, an echo-scoring request (lm-eval's)."""
    prompt = PROMPTS[index % len(PROMPTS)]
    kind = index % 3
    if kind == 1:
        messages = [{"role": "user", "content": prompt}]
        body = {"model": "default", "messages": messages, "max_tokens": args.max_tokens, "stream": True}
        return "/chat/completions", {**body, "temperature": 0.7, "seed": index}
    if kind == 2:
        body = {"model": "default", "prompt": prompt + " The", "max_tokens": 1, "echo": True, "logprobs": 1}
        return "/completions", {**body, "temperature": 0}
    return "/completions", request_body(index, args)


async def send(client: httpx.AsyncClient, index: int, args: argparse.Namespace) -> str | None:
    """One request; its text, or None for any error (a status, a malformed body, an error event)."""
    path, body = mixed_request(index, args) if args.mixed else ("/completions", request_body(index, args))
    if not body.get("stream"):
        response = await client.post(path, json=body)
        data = response.json()
        ok = response.status_code == 200 and len(data["choices"]) == 1 and data["usage"]["total_tokens"]
        return data["choices"][0]["text"] if ok else None
    parts, done = [], False
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            return None
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return None
                parts += [c["delta"].get("content") or "" for c in chunk.get("choices", [])]
    return "".join(parts) if done else None


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    sent: int = 0
    elapsed: float = 0.0
    answers: dict[int, str] = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.sent - len(self.latencies) - self.errors

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(
    name: str, max_batch_size: int, args: argparse.Namespace, src: str | None = None, flags: tuple = ()
):
    """A `dln serve` subprocess on a free loopback port (from the checkout `src` if given, with extra
    `flags`); yields its /v1 URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "dln",
        "serve",
        "--model",
        args.model,
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
        "--threads",
        str(args.threads),
        "--log-level",
        "warning",
        *flags,
    ]
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)} if src else None
    with started(name, command, port, cwd=src, env=env) as process:
        yield f"http://127.0.0.1:{port}/v1", process.pid


@contextmanager
def started(name: str, command: list[str], port: int, cwd=None, env=None, timeout: float = 600):
    """A server subprocess, yielded once its /health on loopback `port` answers 200; its log is shown if it
    exits first. Terminated (killed after 60 s) on leaving."""
    log = tempfile.TemporaryFile(mode="w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"the {name} server exited:\n{log.read()[-4000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {name} server did not start within {timeout:.0f} s")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def load(base_url: str, clients: int, requests: int, time_cap: float, args: argparse.Namespace) -> Run:
    """`clients` concurrent loops sending greedy requests until `requests` are sent or time is up."""
    run = Run()
    next_index = 0
    start = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=base_url, timeout=time_cap + 300, limits=httpx.Limits(max_connections=clients + 4)
    ) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests and time.perf_counter() - start < time_cap:
                index = next_index
                next_index += 1
                run.sent += 1
                sent_at = time.perf_counter()
                try:
                    text = await send(client, index, args)
                except (httpx.HTTPError, ValueError, KeyError):
                    text = None
                if text is not None:
                    run.latencies.append(time.perf_counter() - sent_at)
                    run.answers[index] = text
                else:
                    run.errors += 1

        await asyncio.gather(*(worker() for _ in range(clients)))
    run.elapsed = time.perf_counter() - start
    return run


def stats_line(label: str, clients: int, run: Run) -> str:
    return (
        f"{label:<14} {clients:>7} {len(run.latencies):>5} {run.errors:>6} {run.lost:>4} {run.rate:>8.2f} "
        f"{run.percentile(0.5):>8.2f} {run.percentile(0.99):>8.2f} {run.elapsed:>8.1f}"
    )


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def soak(args: argparse.Namespace) -> None:
    """Moderate load for `args.soak` seconds; memory after warm-up, every minute, and at the end."""
    with server("batched", 32, args) as (url, pid):
        asyncio.run(load(url, args.soak_clients, 2 * args.soak_clients, args.time_cap, args))
        start_rss, samples = rss_mib(pid), []
        print(
            f"soak: {args.soak_clients} clients for {args.soak:.0f} s; RSS after warm-up {start_rss:.1f} MiB"
        )
        total, deadline = Run(), time.monotonic() + args.soak
        while time.monotonic() < deadline:
            minute = min(60.0, deadline - time.monotonic())
            run = asyncio.run(load(url, args.soak_clients, 10**9, minute, args))
            total.latencies += run.latencies
            total.errors += run.errors
            total.sent += run.sent
            total.elapsed += run.elapsed
            samples.append(rss_mib(pid))
            print(
                f"  {total.elapsed:6.0f} s: {run.rate:5.2f} req/s, p50 {run.percentile(0.5):.2f} s, "
                f"errors {run.errors}, RSS {samples[-1]:.1f} MiB",
                flush=True,
            )
        print(
            f"soak: {len(total.latencies)} requests, {total.errors} errors, {total.lost} lost; RSS start "
            f"{start_rss:.1f} MiB, end {samples[-1]:.1f} MiB, max {max(samples):.1f} MiB "
            f"(growth {samples[-1] - start_rss:+.1f} MiB); latency p50 {total.percentile(0.5):.2f} s, "
            f"p99 {total.percentile(0.99):.2f} s"
        )
        if total.errors or total.lost:
            sys.exit(1)


async def stream_times(client: httpx.AsyncClient, body: dict, started: asyncio.Event | None = None):
    """(seconds to the first text, seconds to [DONE], the text, the clock at [DONE]) of one streaming
    completion; sets `started` at its first text."""
    sent, first, parts = time.perf_counter(), None, []
    async with client.stream("POST", "/completions", json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                break
            if line.startswith("data: "):
                text = "".join(c.get("text") or "" for c in json.loads(line[6:]).get("choices", []))
                if text and first is None:
                    first = time.perf_counter() - sent
                    if started is not None:
                        started.set()
                parts.append(text)
    end = time.perf_counter()
    return first, end - sent, "".join(parts), end


async def staggered_run(base_url: str, args: argparse.Namespace) -> tuple[tuple, list[tuple]]:
    """One long greedy stream, then `args.late` short ones sent `args.stagger` s apart while it decodes."""
    async with httpx.AsyncClient(base_url=base_url, timeout=args.time_cap + 300) as client:
        started = asyncio.Event()
        long_body = {
            "model": "default",
            "prompt": PROMPTS[0],
            "max_tokens": args.long_tokens,
            "temperature": 0,
        }
        long = asyncio.create_task(stream_times(client, long_body, started))
        await started.wait()
        late = []
        for i in range(args.late):
            await asyncio.sleep(args.stagger)
            late.append(asyncio.create_task(stream_times(client, request_body(i + 1, args))))
        return await long, list(await asyncio.gather(*late))


def staggered(args: argparse.Namespace) -> None:
    """Time to first token of late requests with and without continuous batching, same machine, same run."""
    rows, texts = [], {}
    for name, flags in (("continuous", ()), ("no-continuous", ("--no-continuous-batching",))):
        with server(name, 32, args, flags=flags) as (url, _):
            asyncio.run(load(url, 1, 1, args.time_cap, args))  # the first request pays for initialisation
            (_, long_s, _, long_end), late = asyncio.run(staggered_run(url, args))
        ttft = sorted(t[0] for t in late)
        latency = sorted(t[1] for t in late)[len(late) // 2]
        before = sum(t[3] < long_end for t in late)
        rows.append((name, long_s, ttft[len(ttft) // 2], ttft[-1], latency, before))
        texts[name] = [t[2] for t in late]
    print(
        f"{'server':<14} {'long s':>7} {'late TTFT p50':>14} {'TTFT max':>9} {'late p50 s':>11} "
        f"{'done before the long one':>25}"
    )
    for name, long_s, p50, worst, latency, before in rows:
        print(
            f"{name:<14} {long_s:>7.2f} {p50:>14.2f} {worst:>9.2f} {latency:>11.2f} {before:>20}/{args.late}"
        )
    print(f"late TTFT p50 ratio no-continuous / continuous: {rows[1][2] / rows[0][2]:.1f}x")
    same = texts["continuous"] == texts["no-continuous"]
    print(f"greedy late answers equal on both servers: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="hf:default", help="model URI both servers serve")
    parser.add_argument("--requests", type=int, default=64, help="requests per server and level")
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds per server and level")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per completion")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, help="the batched server's wait")
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        help="instead: run the batched server at moderate load (--soak-clients) for this many seconds and "
        "report its memory at start and end",
    )
    parser.add_argument("--soak-clients", type=int, default=8, help="concurrent clients during --soak")
    parser.add_argument(
        "--mixed", action="store_true", help="completions, streaming chat and echo scoring in turn"
    )
    parser.add_argument("--scoring", action="store_true", help="send 1-token scoring requests (logprobs 100)")
    parser.add_argument(
        "--staggered",
        action="store_true",
        help="instead: late requests join one long streaming request, with and without continuous batching",
    )
    parser.add_argument("--late", type=int, default=4, help="late requests in --staggered")
    parser.add_argument(
        "--long-tokens", type=int, default=128, help="tokens of the long request in --staggered"
    )
    parser.add_argument("--stagger", type=float, default=0.5, help="seconds between late arrivals")
    parser.add_argument(
        "--baseline-src",
        help="compare with a batched server run from this checkout (e.g. a git worktree before a change) "
        "instead of the one-at-a-time server",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per server (1: steady on a shared CPU; 0: torch's default)",
    )
    args = parser.parse_args()

    kind = "1-token scoring requests (logprobs 100)" if args.scoring else f"{args.max_tokens} tokens each"
    print(
        f"model {args.model}, {args.requests} requests per run (cap {args.time_cap:.0f} s), {kind}, "
        f"torch threads {args.threads or 'default'}, {os.cpu_count()} CPUs"
    )
    if args.soak:
        return soak(args)
    if args.staggered:
        return staggered(args)
    other = ("baseline", 32, args, args.baseline_src) if args.baseline_src else ("one-at-a-time", 1, args)
    with server("batched", 32, args) as (batched, _), server(*other) as (single, _):
        # one untimed request each: the first one pays for lazy initialisation
        for url in (batched, single):
            asyncio.run(load(url, 1, 1, args.time_cap, args))
        print(
            f"{'server':<14} {'clients':>7} {'ok':>5} {'errors':>6} {'lost':>4} {'req/s':>8} {'p50 s':>8} "
            f"{'p99 s':>8} {'wall s':>8}"
        )
        ratios, mismatches, problems = {}, 0, 0
        for clients in args.levels:
            one = asyncio.run(load(single, clients, args.requests, args.time_cap, args))
            print(stats_line(other[0], clients, one), flush=True)
            many = asyncio.run(load(batched, clients, args.requests, args.time_cap, args))
            print(stats_line("batched", clients, many), flush=True)
            ratios[clients] = many.rate / one.rate if one.rate else float("nan")
            mismatches += sum(
                many.answers[i] != one.answers[i] for i in many.answers.keys() & one.answers.keys()
            )
            problems += one.errors + one.lost + many.errors + many.lost
        for clients, ratio in ratios.items():
            print(f"throughput ratio batched / {other[0]} at {clients:>2} clients: {ratio:.2f}x")
        print(
            f"errors + lost requests: {problems}; greedy answers differing between the servers: {mismatches}"
        )
        if problems:
            sys.exit(1)


if __name__ == "__main__":
    main()
