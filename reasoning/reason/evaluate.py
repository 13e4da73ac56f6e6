"""Held-out accuracy of a policy (an adapter, or the base model) on a reasoning split, greedy decoding.

Accuracy is strict (`Answer: N` must appear, `reasoning.reason.tasks.is_correct`); the lenient score
(last number in the text) is reported next to it, since a base model that never writes `Answer:` scores 0
strictly.

Example:
    policy = Policy.load(PolicyConfig(), adapters=("policy",))
    evaluate(policy, chain_task().test, adapter=None)   # the base model
"""

from __future__ import annotations

import time
from pathlib import Path

from reasoning.reason.tasks import is_correct, policy_prompt


def evaluate(
    policy,
    split,
    adapter: str | None = "policy",
    limit: int = 0,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    samples_out: str | Path | None = None,
) -> dict:
    """Greedy completions of `split`'s questions under `adapter` (None: the base model), scored.

    Args:
        policy: a `reasoning.finetune.policy.Policy`.
        split: rows with question and answer (a `datasets.Dataset` or a list of dicts).
        adapter: adapter name, or None for the base model with adapters disabled.
        limit: first N rows only (0: all).
        max_new_tokens: longest completion.
        batch_size: prompts per generate call.
        samples_out: optional JSONL path for every (question, completion, answer, correct).

    Returns:
        {"accuracy", "accuracy_lenient", "n", "trace_len", "seconds"}.
    """
    import json

    rows = list(split)[: limit or None]
    if not rows:
        return {"accuracy": 0.0, "accuracy_lenient": 0.0, "n": 0, "trace_len": 0.0, "seconds": 0.0}
    start = time.time()
    prompts = policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
    with policy.use(adapter):
        completions = policy.sample(
            prompts, n=1, max_new_tokens=max_new_tokens, temperature=0, batch_size=batch_size
        )
    texts = [policy.decode(c[0]) for c in completions]
    strict = [is_correct(t, r["answer"]) for t, r in zip(texts, rows)]
    lenient = [is_correct(t, r["answer"], strict=False) for t, r in zip(texts, rows)]
    if samples_out:
        with open(samples_out, "w", encoding="utf-8") as handle:
            for r, t, c in zip(rows, texts, strict):
                handle.write(
                    json.dumps(
                        {"question": r["question"], "completion": t, "answer": r["answer"], "correct": c}
                    )
                    + "\n"
                )
    return {
        "accuracy": sum(strict) / len(rows),
        "accuracy_lenient": sum(lenient) / len(rows),
        "n": len(rows),
        "trace_len": sum(len(c[0]) for c in completions) / len(rows),
        "seconds": round(time.time() - start, 2),
    }
