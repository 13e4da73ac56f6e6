"""Decoding speed: `hf:` before and after, `vllm:` from its own venv, and the machine's matmul peak, one run.

Prints the CPU model and its vector flags, the peak matmul GFLOP/s (fp32, and bf16 where the CPU has
avx512_bf16 or AMX), then tokens/s of each of `--modes` (`greedy`; `seeded`: T = 1, the full distribution;
`nucleus`: seeded, T = 1, top-p 0.9) at each batch size x `--max-tokens` new tokens, for:
- `hf-before`: the backend as it was, fp32 with torch's default thread count;
- `hf-after`: `threads=--threads` and, where the CPU has bf16, `decode_dtype="bfloat16"`;
- `hf-base` (with `--baseline-src DIR`): hf-after's settings on another checkout of the code (before a change,
  e.g. `git archive <commit> | tar -x -C DIR`), so a change's gain is measured side by side in one run;
- `vllm`: the vLLM CPU build (`make vllm-venv`), bf16 where the CPU has it, else fp32.
Each engine runs in its own subprocess (thread settings are per process); every cell is the best of
`--repeats` after one warm-up call. Tokens are the generated ids of every row, cut after the end token.

    python benchmarks/bench_decode.py [--batches 1 8 16 32] [--max-tokens 64] [--threads 1] [--repeats 2]
                                      [--engines hf-before hf-after vllm] [--baseline-src DIR]
                                      [--modes greedy seeded nucleus]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dln.lm.hardware import cpu, native_bf16

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
SUBJECTS = ["the sea", "a small town", "winter", "a lost key", "the first train", "an old library", "bread"]
PROMPTS = [f"Write a long story about {s}. Once upon a time," for s in SUBJECTS * 5]
MODES = {"greedy": (0.0, 1.0, None), "seeded": (1.0, 1.0, 0), "nucleus": (1.0, 0.9, 0)}  # T, top-p, seed


def peak_gflops(dtype_name: str, threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def time_cells(decode, batches, repeats, modes) -> dict:
    """decode(prompts, temperature, top_p, seed) -> generated id rows; the best tokens/s per (mode, batch)."""
    results = {}
    decode(PROMPTS[:2], *MODES["greedy"])  # warm-up: page the weights in, initialise kernels
    for batch in batches:
        for mode in modes:
            best = 0.0
            for _ in range(repeats):
                start = time.perf_counter()
                rows = decode(PROMPTS[:batch], *MODES[mode])
                best = max(best, sum(len(r) for r in rows) / (time.perf_counter() - start))
            results[f"{mode} {batch}"] = best
            print(f"  {mode} batch {batch}: {best:.1f} tok/s", file=sys.stderr, flush=True)
    return results


def hf_worker(args) -> dict:
    import torch

    from dln.lm import load_model
    from dln.lm.base import SamplingOptions

    lm = load_model("hf:default", cache=False, threads=args.threads or None, decode_dtype=args.dtype)
    lm.batch_size = max(args.batches)
    encoded_all = [lm.encode_prompt(p) for p in PROMPTS]

    def decode(prompts, temperature, top_p, seed):
        options = SamplingOptions(1, temperature, args.max_tokens, (), seed)
        return lm._sample_rows(encoded_all[: len(prompts)], options, top_p, model=lm.decoder)

    cells = time_cells(decode, args.batches, args.repeats, args.modes)
    return {"threads": torch.get_num_threads(), "cells": cells}


def vllm_worker(args) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from dln.lm import load_model

    lm = load_model("vllm:default", cache=False, dtype=args.dtype or "float32", max_model_len=512)
    encoded = [TokensPrompt(prompt_token_ids=lm.encode_prompt(p)) for p in PROMPTS]

    def decode(prompts, temperature, top_p, seed):
        params = [
            SamplingParams(
                temperature=temperature, top_p=top_p, top_k=0, max_tokens=args.max_tokens, seed=seed
            )
            for _ in prompts
        ]
        outputs = lm._llm.generate(encoded[: len(prompts)], params, use_tqdm=False)
        return [o.outputs[0].token_ids for o in outputs]

    try:
        return {"cells": time_cells(decode, args.batches, args.repeats, args.modes)}
    finally:
        lm.close()


def run_engine(name: str, args) -> dict:
    bf16 = "bfloat16" if native_bf16() else None
    python, extra = sys.executable, []
    env = None
    if name == "hf-before":
        extra = ["--threads", "0"]
    elif name in ("hf-after", "hf-base"):
        extra = ["--threads", str(args.threads)] + (["--dtype", bf16] if bf16 else [])
        if name == "hf-base":
            env = {**os.environ, "PYTHONPATH": os.path.abspath(args.baseline_src)}
    else:
        python, extra = str(VLLM_PYTHON), ["--dtype", bf16 or "float32"]
    command = [python, __file__, "--worker", name.split("-")[0], *extra, "--batches", *map(str, args.batches)]
    command += ["--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats), "--modes", *args.modes]
    print(f"{name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def report(args) -> None:
    model, flags = cpu()
    print(f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(flags)}; load {os.getloadavg()[0]:.2f}")
    for dtype in ["float32"] + (["bfloat16"] if native_bf16() else []):
        print(
            f"peak matmul {dtype}: "
            + ", ".join(f"{peak_gflops(dtype, t):.0f} GFLOP/s on {t} thread(s)" for t in (1, os.cpu_count()))
        )
    results = {name: run_engine(name, args) for name in args.engines}
    print(
        f"\n{args.max_tokens} new tokens per row; tokens/s (ratio to vllm); load at the end "
        f"{os.getloadavg()[0]:.2f}"
    )
    before = "hf-base" if "hf-base" in results else "hf-before"
    print("| mode | batch | " + " | ".join(args.engines) + f" | hf-after / {before} |")
    print("|---|---|" + "---|" * (len(args.engines) + 1))
    for cell in results[args.engines[0]]["cells"]:
        row = []
        for name in args.engines:
            rate = results[name]["cells"][cell]
            vllm = results.get("vllm", {}).get("cells", {}).get(cell)
            row.append(f"{rate:.1f}" + (f" ({rate / vllm:.2f}x)" if vllm and name != "vllm" else ""))
        gain = ""
        if {before, "hf-after"} <= results.keys():
            gain = f"{results['hf-after']['cells'][cell] / results[before]['cells'][cell]:.2f}x"
        print(f"| {cell.split()[0]} | {cell.split()[1]} | " + " | ".join(row) + f" | {gain} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="hf-after's torch threads (0: torch's default)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["greedy", "seeded", "nucleus"])
    parser.add_argument("--engines", nargs="+", help="default: hf-before [hf-base] hf-after vllm")
    parser.add_argument("--baseline-src", help="a checkout of the code before a change: adds hf-base")
    parser.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engines is None:
        args.engines = ["hf-before", *(["hf-base"] if args.baseline_src else []), "hf-after", "vllm"]
    if args.worker:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        result = (hf_worker if args.worker == "hf" else vllm_worker)(args)
        print(json.dumps(result))
    else:
        report(args)


if __name__ == "__main__":
    main()
