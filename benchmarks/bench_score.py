"""Scoring speed: our `classify` (batched, each prompt computed once) against the naive loop.

The naive loop is what a first implementation does: one transformers forward over prompt + label for every
(prompt, label) pair. Both run side by side in one process on the same model; the script prints their
times, the speed-up and the largest difference between their normalised log-probs.

`--server` measures the server's echo scoring instead (`serving.backends.logprobs.token_logprobs`, what
lm-eval's requests reach): every (prompt, label) row in one call, with the shared-prefix path and without it
(`MIN_SHARED` raised past every row), in turn.

    python benchmarks/bench_score.py [--prompts 32] [--labels 4] [--repeats 3] [--server]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dln.lm import load_model

INSTRUCTION = (
    "Read the customer review below and decide which department should handle it. Reply with one "
    "word: the department's name.\n\n"
)
REVIEWS = [
    "The parcel arrived two weeks late and the box was crushed.",
    "I was charged twice for the same order and nobody answers my emails.",
    "The blender stopped working after three days of normal use.",
    "The delivery driver was rude and left the package in the rain.",
    "My refund has still not appeared on my card after a month.",
    "The screen of the tablet flickers whenever the battery is below half.",
    "The courier lost my parcel and the tracking page shows nothing.",
    "The invoice lists items that I never ordered.",
]
LABELS = [" shipping", " billing", " repairs", " support", " returns", " sales"]


def naive_classify(model, prompts: list[str], labels: list[str]) -> np.ndarray:
    tok, net = model.tokenizer, model.model
    out = np.zeros((len(prompts), len(labels)))
    for i, prompt in enumerate(prompts):
        context = tok(prompt).input_ids
        for j, label in enumerate(labels):
            cont = tok(label, add_special_tokens=False).input_ids
            with torch.inference_mode():
                logprobs = torch.log_softmax(net(torch.tensor([context + cont])).logits[0].float(), dim=-1)
            out[i, j] = sum(logprobs[len(context) - 1 + k, t].item() for k, t in enumerate(cont))
    return out - np.logaddexp.reduce(out, axis=1, keepdims=True)


def best_time(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="hf:default")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--labels", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--server", action="store_true", help="the server's echo scoring, shared prefix or not"
    )
    args = parser.parse_args()

    model = load_model(args.model, cache=False)
    prompts = [
        f"{INSTRUCTION}Review {i}: {REVIEWS[i % len(REVIEWS)]}\nDepartment:" for i in range(args.prompts)
    ]
    labels = LABELS[: args.labels]
    tokens = len(model.tokenizer(prompts[0]).input_ids)
    print(
        f"model {model.uri}, {args.prompts} prompts (~{tokens} tokens) x {args.labels} labels, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}"
    )
    if args.server:
        return server_scoring(model, prompts, labels, args.repeats)
    model.classify(prompts[:2], labels)  # warm-up
    naive_s, naive = best_time(lambda: naive_classify(model, prompts, labels), args.repeats)
    ours_s, ours = best_time(lambda: model.classify(prompts, labels), args.repeats)
    print(f"naive loop (one forward per prompt-label pair): {naive_s:8.3f} s")
    print(f"dln classify (batched, shared prompt prefix):   {ours_s:8.3f} s")
    print(f"speed-up: {naive_s / ours_s:.1f}x   max |diff| of log-probs: {np.abs(naive - ours).max():.2e}")


def server_scoring(model, prompts: list[str], labels: list[str], repeats: int) -> None:
    """Echo scoring of every (prompt, label) row in one call, shared-prefix path against none."""
    from serving.backends import logprobs

    rows = [model.encode_prompt(p) + model.encode_continuation(label) for p in prompts for label in labels]
    shared_min = logprobs.MIN_SHARED

    def run(shared: bool):
        logprobs.MIN_SHARED = shared_min if shared else 10**9
        return logprobs.token_logprobs(model, rows, [0] * len(rows), top_k=1)

    run(True)  # warm-up
    times = {True: [], False: []}
    results = {}
    for _ in range(repeats):  # in turn, so both see the same load
        for shared in (False, True):
            start = time.perf_counter()
            results[shared] = run(shared)
            times[shared].append(time.perf_counter() - start)
    diff = max(
        abs(a - b)
        for x, y in zip(results[True], results[False], strict=True)
        for a, b in zip(x.logprobs[1:], y.logprobs[1:], strict=True)
    )
    plain, shared = min(times[False]), min(times[True])
    print(f"{len(rows)} echo-scoring rows, one call each way, best of {repeats}")
    print(f"each row's own forward:        {plain:8.3f} s")
    print(f"shared prefix run once:        {shared:8.3f} s")
    print(f"speed-up: {plain / shared:.1f}x   max |diff| of token log-probs: {diff:.2e}")


if __name__ == "__main__":
    main()
