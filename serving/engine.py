"""The HF model work behind the server: batched generation with live token streaming, and token log-probs.

Everything here is synchronous and runs in the micro-batcher's single model thread (`batcher`), one batch
at a time. Requests reach it as token ids, tokenised by the serving layer with `dln.lm.tokens`' rule, so the
server's tokens are the `hf:` backend's tokens.

Log-probs of generated tokens are computed *after* generation by one more forward over prompt + completion
(`token_logprobs`), rather than from `generate`'s per-step scores: those are post-processed (temperature,
top-p) and would keep a (steps, rows, vocab) tensor alive for every batch; the extra forward gives the raw
model log-probs (what OpenAI and vLLM report) and costs about one prefill, only for requests that ask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers.generation.streamers import BaseStreamer

from dln.lm import sampling
from dln.lm.base import truncate_at_stop

#: tokens per forward when computing log-probs; bounds the (rows, T, hidden) activations.
TOKEN_BUDGET = 4096
#: positions per vocabulary projection; bounds the (positions, vocab) logits.
LOGIT_BLOCK = 512
#: sequences per `generate` call (rows x n).
MAX_ROWS = 64


@dataclass(frozen=True)
class SamplingParams:
    """What changes a sample; requests with equal params share one `generate` call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class TokenLogprobs:
    """Per-token log-probs of `token_ids`; `logprobs[i]` is None where nothing predicts token i (a prompt's
    first token); `top[i]` holds the k most likely (token id, log-prob) at position i."""

    token_ids: list[int]
    logprobs: list[float | None]
    top: list[list[tuple[int, float]]]


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (end of sequence or a stop string) or "length"
    logprobs: TokenLogprobs | None = None  # the prompt's tokens first when the job echoes


@dataclass
class GenerateJob:
    """One request's generation: `n` samples for each prompt.

    Args:
        prompts: token ids of each prompt.
        params: sampling parameters.
        logprobs: top-k log-probs per generated token; None for none.
        echo: also return the prompt tokens' log-probs (with `logprobs`).
        on_text: called from the model thread with (choice index, new text) as tokens arrive; the choice
            index is prompt_index * n + sample_index. Text is held back while it could still turn into a stop
            string, so the pieces always add up to a prefix of the final text.
    """

    prompts: list[list[int]]
    params: SamplingParams
    logprobs: int | None = None
    echo: bool = False
    on_text: Callable[[int, str], None] | None = None


@dataclass
class ScoreJob:
    """Log-probs of every token of each prompt (echo scoring), with `top_k` alternatives per position."""

    prompts: list[list[int]]
    top_k: int = 0


@dataclass
class _Row:
    job: int
    choices: list[int]  # the job's choice indices this row's text goes to (n copies when greedy)
    ids: list[int] = field(default_factory=list)
    sent: int = 0
    done: bool = False


class HFEngine:
    """Batched generation and log-probs on a `dln.lm.hf.HFLanguageModel`."""

    def __init__(self, lm) -> None:
        self.lm, self.model, self.tokenizer = lm, lm.model, lm.tokenizer
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
        rows = [(j, p) for j, job in enumerate(jobs) for p in range(len(job.prompts))]
        out: dict[tuple[int, int], list[Sample]] = {}
        # Seeded requests batch like any other: the sampling rule draws each prompt from its own generator.
        step = max(1, MAX_ROWS // params.n)
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            for key, samples in zip(chunk, self._generate_rows(jobs, chunk, params), strict=True):
                out[key] = samples
        self._add_logprobs(jobs, out)
        return [[out[(j, p)] for p in range(len(job.prompts))] for j, job in enumerate(jobs)]

    def _generate_rows(self, jobs, keys: list[tuple[int, int]], params: SamplingParams) -> list[list[Sample]]:
        prompts = [jobs[j].prompts[p] for j, p in keys]
        # Greedy decoding gives n equal samples: decoded once per prompt and copied below.
        rows_per_prompt = 1 if params.greedy else params.n
        streamer = _RowStreamer(self, jobs, keys, params, rows_per_prompt)
        new, _ = sampling.sample_ids(
            self.model,
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
        samples = [self._sample(ids, params) for ids in new]
        if params.greedy:
            return [[replace(s) for _ in range(params.n)] for s in samples]
        return [samples[i * params.n : (i + 1) * params.n] for i in range(len(keys))]

    def _sample(self, ids: list[int], params: SamplingParams) -> Sample:
        # A row ends at its first end-of-sequence token; a row stopped by a stop string is padded with it.
        cut = next((i for i, t in enumerate(ids) if t in self.end_ids), None)
        ids = ids if cut is None else ids[:cut]
        full = self.tokenizer.decode(ids, skip_special_tokens=True)
        text = truncate_at_stop(full, params.stop)
        if len(text) < len(full):
            # Cut at a stop string: keep the tokens up to the one that completes `text`, so the log-probs
            # and the token count describe the returned text rather than the stop string after it.
            ids = ids[: self._covering_prefix(ids, len(text))]
        finished = cut is not None or len(text) < len(full) or any(s in full for s in params.stop)
        return Sample(text, ids, "stop" if finished else "length")

    def _covering_prefix(self, ids: list[int], length: int) -> int:
        """The fewest leading tokens whose text is at least `length` characters long."""
        for m in range(len(ids) + 1):
            if len(self.tokenizer.decode(ids[:m], skip_special_tokens=True)) >= length:
                return m
        return len(ids)

    def _add_logprobs(self, jobs: Sequence[GenerateJob], out: dict[tuple[int, int], list[Sample]]) -> None:
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
        for ((j, _), sample), lp in zip(wanted, self.token_logprobs(rows, starts, top_k), strict=True):
            k = jobs[j].logprobs
            sample.logprobs = TokenLogprobs(lp.token_ids, lp.logprobs, [t[:k] for t in lp.top])

    # -- log-probs -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, jobs: Sequence[ScoreJob]) -> list[list[TokenLogprobs]]:
        """Every prompt's token log-probs (first token None), all jobs in one pass: result[job][prompt]."""
        rows = [ids for job in jobs for ids in job.prompts]
        top_k = max(job.top_k for job in jobs)
        flat = self.token_logprobs(rows, [0] * len(rows), top_k)
        result, start = [], 0
        for job in jobs:
            part = flat[start : start + len(job.prompts)]
            start += len(job.prompts)
            result.append(
                [TokenLogprobs(t.token_ids, t.logprobs, [x[: job.top_k] for x in t.top]) for t in part]
            )
        return result

    def token_logprobs(self, rows: list[list[int]], starts: list[int], top_k: int) -> list[TokenLogprobs]:
        """log p(row[i] | row[:i]) for i >= starts[r], one forward per chunk of rows (None at position 0).

        Rows are right-padded, so no real token attends to padding and positions need no offset.
        """
        results: list[TokenLogprobs | None] = [None] * len(rows)
        if not rows:
            return []
        order = sorted(range(len(rows)), key=lambda r: len(rows[r]))  # similar lengths pad less
        chunk: list[int] = []
        for r in order + [None]:
            if r is not None and (not chunk or (len(chunk) + 1) * len(rows[r]) <= TOKEN_BUDGET):
                chunk.append(r)
                continue
            hidden = self._hidden([rows[i] for i in chunk])  # (B, T, H)
            for b, i in enumerate(chunk):
                results[i] = self._row_logprobs(hidden[b], rows[i], starts[i], top_k)
            chunk = [r] if r is not None else []
        return results  # type: ignore[return-value]

    def _hidden(self, rows: list[list[int]]) -> torch.Tensor:
        ids, mask = self.lm.pad(rows, side="right")
        return self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state

    def _row_logprobs(self, hidden: torch.Tensor, ids: list[int], start: int, top_k: int) -> TokenLogprobs:
        head = self.model.get_output_embeddings()
        targets = torch.tensor(ids, device=hidden.device)
        logprobs: list[float | None] = [None] if start == 0 else []
        top: list[list[tuple[int, float]]] = [[]] if start == 0 else []
        # token i is predicted by position i - 1
        for lo in range(max(start, 1), len(ids), LOGIT_BLOCK):
            hi = min(lo + LOGIT_BLOCK, len(ids))
            block = torch.log_softmax(head(hidden[lo - 1 : hi - 1]).float(), dim=-1)  # (P, V)
            logprobs.extend(block.gather(1, targets[lo:hi, None]).squeeze(1).tolist())
            if top_k:
                values, indices = block.topk(top_k, dim=-1)
                top.extend(
                    list(zip(i_row, v_row, strict=True))
                    for i_row, v_row in zip(indices.tolist(), values.tolist(), strict=True)
                )
            else:
                top.extend([] for _ in range(hi - lo))
        return TokenLogprobs(ids[start:], logprobs, top)

    # -- programs ------------------------------------------------------------------------------------
    @staticmethod
    def run_program(program, batches: Sequence[list[str]]) -> list[list[str]]:
        """One `program.predict` call over every request's inputs."""
        flat = [x for inputs in batches for x in inputs]
        answers = list(program.predict(flat))
        result, start = [], 0
        for inputs in batches:
            result.append(answers[start : start + len(inputs)])
            start += len(inputs)
        return result


class _RowStreamer(BaseStreamer):
    """Hands each row's new text to its job's `on_text` as `generate` produces tokens (batched streaming).

    `generate` calls `put` with the (rows, T_in) prompt first, then with one (rows,) token tensor per step.
    """

    def __init__(self, engine: HFEngine, jobs, keys, params: SamplingParams, rows_per_prompt: int) -> None:
        self.engine, self.jobs, self.params = engine, jobs, params
        n = params.n
        self.rows = [
            _Row(j, [p * n + s] if rows_per_prompt == n else [p * n + c for c in range(n)])
            for j, p in keys
            for s in range(rows_per_prompt)
        ]
        self.active = any(jobs[j].on_text is not None for j, _ in keys)
        # a stop string may begin in text already decoded: keep its length minus one back until it cannot
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.started = False

    def put(self, value: torch.Tensor) -> None:
        if not self.started:  # the prompt
            self.started = True
            return
        for row, token in zip(self.rows, value.tolist(), strict=True):
            callback = self.jobs[row.job].on_text
            if row.done or callback is None:
                continue
            if token in self.engine.end_ids:
                row.done = True
                continue
            row.ids.append(token)
            text = self.engine.tokenizer.decode(row.ids, skip_special_tokens=True)
            cut = truncate_at_stop(text, self.params.stop)
            if len(cut) < len(text):
                row.done, safe = True, len(cut)
            else:
                safe = len(text) - self.hold
                if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
                    safe = min(safe, len(text) - 1)
            if safe > row.sent:
                for choice in row.choices:
                    callback(choice, text[row.sent : safe])
                row.sent = safe

    def end(self) -> None:
        pass
