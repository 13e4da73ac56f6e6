"""What decoding speed buys the algorithms: wall time of real runs on this checkout against an older one.

Runs, in turn on both checkouts (the old one from `--baseline-src DIR`, e.g. `git archive <commit> | tar -x
-C DIR`; each command a fresh process with no request cache):
- `dln1`: one DLN-1 iteration of the light preset on sentiment (N = 6 proposals, batch 12, a dev evaluation);
- `dln2`: one DLN-2 iteration of the light preset on sentiment (K = 2 hidden samples per example);
- `reason`: `--steps` updates of IWAE (K = 4 traces per question, batch 8) on the chain task, without q's
  warm-up or the held-out evaluation (the trainer's own `train_seconds`).
This checkout runs with `--decode_dtype bfloat16` (DLN's bf16 decode copy) where the CPU has bf16; the old one
with what it had. Prints seconds per run and the ratio old / new.

    python benchmarks/bench_algorithms.py --baseline-src DIR [--jobs dln1 dln2 reason] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dln.lm.hardware import cpu, native_bf16

ROOT = Path(__file__).resolve().parent.parent


def command(job: str, out: str, args, new: bool) -> list[str]:
    dln = [sys.executable, "-m", "dln"]
    if job in ("dln1", "dln2"):
        flags = ["--config", f"configs/{job}/sentiment.yaml", "--preset", "light", "--iterations", "1"]
        extra = ["--decode_dtype", "bfloat16"] if new and native_bf16() else []
        return [*dln, "train", *flags, "--no-cache", "--quiet", "--out", out, *extra]
    flags = [
        "--config",
        "configs/reason/iwae.yaml",
        "--steps",
        str(args.steps),
        "--posterior_warmup_steps",
        "0",
    ]
    return [*dln, "reason", "train", *flags, "--eval_size", "0", "--quiet", "--out", out]


def timed(job: str, src: Path, args, new: bool) -> float:
    """Seconds of one run of `job` from the checkout `src` (the trainer's own figure for `reason`)."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = command(job, str(Path(tmp) / "run"), args, new)
        env = {**os.environ, "PYTHONPATH": str(src), "DLN_CACHE": "off", "TRANSFORMERS_VERBOSITY": "error"}
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=src, env=env, stdout=subprocess.PIPE, text=True, check=True)
        seconds = time.perf_counter() - start
    if job == "reason":
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["train_seconds"]
    print(f"  {job} {'new' if new else 'old'}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", required=True, help="a checkout of the code before a change")
    parser.add_argument(
        "--jobs", nargs="+", choices=["dln1", "dln2", "reason"], default=["dln1", "dln2", "reason"]
    )
    parser.add_argument("--steps", type=int, default=2, help="IWAE updates of the reason job")
    args = parser.parse_args()
    model, flags = cpu()
    print(f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(flags)}; load {os.getloadavg()[0]:.2f}")
    rows = []
    for job in args.jobs:
        old = timed(job, Path(args.baseline_src).resolve(), args, new=False)
        new = timed(job, ROOT, args, new=True)
        rows.append((job, old, new))
    print(f"\n| run | old s | new s | old / new |  (load at the end {os.getloadavg()[0]:.2f})")
    print("|---|---|---|---|")
    for job, old, new in rows:
        print(f"| {job} | {old:.1f} | {new:.1f} | {old / new:.2f}x |")


if __name__ == "__main__":
    main()
