"""The HF model work behind the server: batched generation with live token streaming, and token log-probs.

Everything here is synchronous and runs in the backend's single model thread (`batcher`, `continuous`), one
call at a time; the continuous batcher decodes with `dln.lm.continuous` and takes `prompt_samples`,
`add_logprobs` and `end_ids` from here. Requests reach it as token ids, tokenised by the serving layer with
`dln.lm.tokens`' rule, so the server's tokens are the `hf:` backend's tokens. Sampling follows
`dln.lm.sampling` (seeded requests batch like any other: each prompt draws from its own generator);
log-probs come from `logprobs`, streaming from `streaming`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from dln.lm import sampling
from dln.lm.base import truncate_at_stop
from serving.backends import one_token
from serving.backends.jobs import GenerateJob, Sample, SamplingParams, ScoreJob, TokenLogprobs
from serving.backends.logprobs import token_logprobs
from serving.backends.streaming import RowStreamer

#: sequences per `generate` call (rows x n).
MAX_ROWS = 64


class HFEngine:
    """Batched generation and log-probs on a `dln.lm.hf.HFLanguageModel`."""

    def __init__(self, lm) -> None:
        self.lm, self.model, self.tokenizer = lm, lm.model, lm.tokenizer
        # generation runs on the backend's decoder (its bf16 copy with decode_dtype); log-probs on the model
        self.decoder = getattr(lm, "decoder", lm.model)
        self.device = lm.device
        config = self.model.config
        self.max_model_len = int(
            getattr(config, "max_position_embeddings", 0) or self.tokenizer.model_max_length
        )
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.end_ids = {
            i for i in [*eos, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id] if i is not None
        }

    def warmup(self) -> None:
        """One tiny generation and scoring pass: the first forward of a process pages the weights in and
        initialises kernels (seconds on CPU), which should not land on the first request."""
        ids = self.lm.encode_prompt("Hello")
        self.generate([GenerateJob([ids], SamplingParams(temperature=0.0, max_tokens=2), logprobs=1)])

    # -- generation ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, jobs: Sequence[GenerateJob]) -> list[list[list[Sample]]]:
        """Samples for every job, prompt and choice: result[job][prompt][sample]. All jobs share params."""
        params = jobs[0].params
        if one_token.applies(params, jobs):  # greedy 1-token scoring requests: one forward, no second prefill
            return one_token.generate(self, jobs)
        rows = [(j, p) for j, job in enumerate(jobs) for p in range(len(job.prompts))]
        out: dict[tuple[int, int], list[Sample]] = {}
        step = max(1, MAX_ROWS // params.n)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            for key, samples in zip(chunk, self.generate_rows(jobs, chunk, params), strict=True):
                out[key] = samples
        self.add_logprobs(jobs, out)
        return [[out[(j, p)] for p in range(len(job.prompts))] for j, job in enumerate(jobs)]

    def generate_rows(self, jobs, keys: list[tuple[int, int]], params: SamplingParams) -> list[list[Sample]]:
        """One `generate` call for the (job, prompt) pairs `keys`: n samples per pair."""
        prompts = [jobs[j].prompts[p] for j, p in keys]
        # Greedy decoding gives n equal samples: decoded once per prompt and copied below.
        rows_per_prompt = 1 if params.greedy else params.n
        streamer = RowStreamer(self.tokenizer, self.end_ids, jobs, keys, params, rows_per_prompt)
        new, _ = sampling.sample_ids(
            self.decoder,
            self.tokenizer,
            prompts,
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_new_tokens=params.max_tokens,
            seed=params.seed,
            stop=params.stop,
            streamer=streamer if streamer.active else None,
            end_ids=self.end_ids,
        )  # (B * rows_per_prompt) rows, prompt-major
        rows = rows_per_prompt
        return [self.prompt_samples(new[i * rows : (i + 1) * rows], params) for i in range(len(keys))]

    def prompt_samples(self, rows: list[list[int]], params: SamplingParams) -> list[Sample]:
        """A prompt's n samples from its generated rows (greedy: one row, copied n times)."""
        samples = [self.to_sample(ids, params) for ids in rows]
        if params.greedy:
            return [replace(samples[0]) for _ in range(params.n)]
        return samples

    def to_sample(self, ids: list[int], params: SamplingParams) -> Sample:
        """A generated row as a sample: cut at its end token or stop string, with its finish reason.

        A row that ends with an end-of-sequence token keeps that token (not its text), as vLLM does: it was
        generated, so it is counted and gets a log-prob (an echo-scoring client such as lm-eval relies on
        exactly one generated token after the prompt's, whichever it is).
        """
        # A row ends at its first end-of-sequence token; a row stopped by a stop string is padded with it.
        cut = next((i for i, t in enumerate(ids) if t in self.end_ids), None)
        ids = ids if cut is None else ids[: cut + 1]
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = truncate_at_stop(full, params.stop)
        if len(text) < len(full):
            # Cut at a stop string: keep the tokens up to the one that completes `text`, so the log-probs
            # and the token count describe the returned text rather than the stop string after it.
            ids = ids[: self.covering_prefix(ids, len(text))]
        finished = cut is not None or len(text) < len(full) or any(s in full for s in params.stop)
        return Sample(text, ids, "stop" if finished else "length")

    def covering_prefix(self, ids: list[int], length: int) -> int:
        """The fewest leading tokens whose text is at least `length` characters long."""
        for m in range(len(ids) + 1):
            if len(self.tokenizer.decode(ids[:m], skip_special_tokens=True)) >= length:
                return m
        return len(ids)

    def add_logprobs(self, jobs: Sequence[GenerateJob], out: dict[tuple[int, int], list[Sample]]) -> None:
        """Fill in the log-probs of the samples whose jobs ask for them, in one scoring pass."""
        wanted = [
            (key, s) for key, samples in out.items() if jobs[key[0]].logprobs is not None for s in samples
        ]
        if not wanted:
            return
        top_k = max(jobs[j].logprobs for (j, _), _ in wanted)
        rows, starts = [], []
        for (j, p), sample in wanted:
            prompt = jobs[j].prompts[p]
            rows.append(prompt + sample.token_ids)
            starts.append(0 if jobs[j].echo else len(prompt))
        for ((j, _), sample), lp in zip(wanted, token_logprobs(self.lm, rows, starts, top_k), strict=True):
            sample.logprobs = lp.keep_top(jobs[j].logprobs)

    # -- log-probs -----------------------------------------------------------------------------------
    def score(self, jobs: Sequence[ScoreJob]) -> list[list[TokenLogprobs]]:
        """Every prompt's token log-probs (first token None), all jobs in one pass: result[job][prompt]."""
        rows = [ids for job in jobs for ids in job.prompts]
        top_k = max(job.top_k for job in jobs)
        flat = token_logprobs(self.lm, rows, [0] * len(rows), top_k)
        result, start = [], 0
        for job in jobs:
            part = flat[start : start + len(job.prompts)]
            start += len(job.prompts)
            result.append([t.keep_top(job.top_k) for t in part])
        return result
