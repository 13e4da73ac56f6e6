"""Choice decoding: `structured_outputs: {"choice": [...]}` (vLLM's name) answers with one of the choices.

Rather than constraining token-by-token decoding to the choices' prefixes (vLLM's grammar, which commits to
a first token before seeing the rest), every choice is scored exactly as a continuation of the prompt, as
`dln`'s `classify` scores labels:

    log p(c | x) = sum_i log p(c_i | x, c_<i)     (c tokenised on its own, appended to the prompt's ids)

in one echo-scoring job over all (prompt, choice) rows. Temperature 0 answers argmax_c log p(c | x); a
temperature T > 0 samples c from softmax(log p(c | x) / T) restricted to the top-p nucleus, reproducibly
under `seed`. The choice carries the extension field `choice_logprobs`: {choice: log p(c | x)}.
"""

from __future__ import annotations

import math

import numpy as np

from dln.lm import tokens
from serving.backends.jobs import Sample, ScoreJob, TokenLogprobs
from serving.errors import BadRequestError
from serving.serving_base import GREEDY_BELOW

PARAM = "structured_outputs"


def check_choice_request(request) -> list[str]:
    """The choices of a request that asks for choice decoding; 400 for what cannot go with it."""
    if request.best_of not in (None, 1) or request.reward:
        raise BadRequestError("structured_outputs.choice does not go with best_of or reward", param=PARAM)
    if request.structured_outputs.model_extra:
        unknown = ", ".join(sorted(request.structured_outputs.model_extra))
        raise BadRequestError(f"structured_outputs: only 'choice' is supported, not {unknown}", param=PARAM)
    return list(request.structured_outputs.choice)


async def choose(
    serving, prompts: list[list[int]], choices: list[str], request, top_k: int | None, echo=False
):
    """n samples per prompt, each a whole choice, with its log-probs when `top_k` is not None."""
    choice_ids = [tokens.encode_continuation(serving.tokenizer, c) for c in choices]
    if not all(choice_ids):
        raise BadRequestError("structured_outputs.choice: a choice must not be empty", param=PARAM)
    rows = [p + ids for p in prompts for ids in choice_ids]
    serving.check_length(rows, 0, PARAM)
    scored = await serving.backend.score(ScoreJob(rows, top_k or 0))
    rng = np.random.default_rng(None if request.seed is None else request.seed % 2**64)
    out = []
    for i, prompt in enumerate(prompts):
        per_choice = scored[i * len(choices) : (i + 1) * len(choices)]
        totals = [math.fsum(lp.logprobs[len(prompt) :]) for lp in per_choice]
        picks = pick(totals, request.temperature, request.top_p, request.n, rng)
        extra = {"choice_logprobs": dict(zip(choices, totals, strict=True))}
        samples = []
        for c in picks:
            lp = per_choice[c] if echo else _tail(per_choice[c], len(prompt))
            sample = Sample(choices[c], choice_ids[c], "stop", lp if top_k is not None else None)
            samples.append(sample)
        out.append((samples, extra))
    return out


def pick(totals: list[float], temperature: float, top_p: float, n: int, rng) -> list[int]:
    """n choice indices: the argmax when greedy, else draws from softmax(totals / T) within the top-p set."""
    best = int(np.argmax(totals))
    if temperature < GREEDY_BELOW:
        return [best] * n
    logits = np.asarray(totals) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)]  # the smallest set >= top_p
    nucleus = probs[keep] / probs[keep].sum()
    return [int(keep[k]) for k in rng.choice(len(keep), size=n, p=nucleus)]


def _tail(lp: TokenLogprobs, start: int) -> TokenLogprobs:
    return TokenLogprobs(lp.token_ids[start:], lp.logprobs[start:], lp.top[start:])
