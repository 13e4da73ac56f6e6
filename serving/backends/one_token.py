"""Greedy one-token requests in one forward: the scoring calls of lm-eval (`echo, max_tokens: 1, logprobs: 1`)
and of Microsoft's DLN (`max_tokens: 1, logprobs: 100`).

`generate` + the log-prob pass would run two prefills over the prompt (one to pick the token, one over
prompt + token for its log-probs). Here one forward over the prompt gives everything: the prompt tokens'
log-probs (echo), and at the last position the distribution the generated token is the argmax of, so its
log-prob and the top-k alternatives come from the forward that produced it:

    y = argmax_v log p(v | x),   logprobs[y] = log p(y | x)   (the raw model log-probs, as the slow path's)

Rows are batched within `logprobs.TOKEN_BUDGET` like any scoring pass, and a prefix shared by several rows
(the choices of one question) runs once (`logprobs.row_hidden_states`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from serving.backends.jobs import GenerateJob, SamplingParams, TokenLogprobs
from serving.backends.logprobs import row_hidden_states, row_logprobs


def applies(params: SamplingParams, jobs: Sequence[GenerateJob]) -> bool:
    """Greedy, one token, no stop strings and no live stream: the cases one forward answers exactly."""
    streams = any(j.on_text is not None for j in jobs)
    return params.greedy and params.max_tokens == 1 and not params.stop and not streams


@torch.inference_mode()
def generate(engine, jobs: Sequence[GenerateJob]):
    """`HFEngine.generate`'s result for jobs that `applies` to: result[job][prompt][sample]."""
    keys = [(j, p) for j, job in enumerate(jobs) for p in range(len(job.prompts))]
    rows = [jobs[j].prompts[p] for j, p in keys]
    wanted = [jobs[j].logprobs for j, _ in keys]
    top_k = max((k for k in wanted if k is not None), default=0)
    head = engine.model.get_output_embeddings()
    out = {}
    for chunk, hidden in row_hidden_states(engine.lm, rows):  # hidden[b]: (len(row), H)
        for b, i in enumerate(chunk):
            j, p = keys[i]
            ids = rows[i]
            last = torch.log_softmax(head(hidden[b][len(ids) - 1]).float(), dim=-1)  # (V,)
            token = int(last.argmax())
            sample = engine.to_sample([token], jobs[j].params)
            if wanted[i] is not None:
                start = 0 if jobs[j].echo else len(ids)
                prompt = row_logprobs(engine.model, hidden[b], ids, start, top_k)
                values, indices = last.topk(top_k) if top_k else (last[:0], last[:0])
                top = list(zip(indices.tolist(), values.tolist(), strict=True))
                logprobs = TokenLogprobs(
                    prompt.token_ids + sample.token_ids,
                    prompt.logprobs + [float(last[token])][: len(sample.token_ids)],
                    prompt.top + [top][: len(sample.token_ids)],
                )
                sample.logprobs = logprobs.keep_top(wanted[i])
            out[(j, p)] = [replace(sample) for _ in range(jobs[j].params.n)]
    return [[out[(j, p)] for p in range(len(job.prompts))] for j, job in enumerate(jobs)]
