"""Continuous batching for the HF engine: a generation request joins the running batch at the next decode step
and leaves it when it is done.

Why: with one `generate` call per batch, a request that arrives while a batch decodes waits until the whole
batch is finished, and only requests with equal sampling options can share a call. Here every generation
decodes in one running batch (`dln.lm.continuous.ContinuousDecoder`), each row with its own options.

The rule (one model thread, as in `batcher.MicroBatcher`):

- Between two decode steps the scheduler (`ContinuousBatcher`, on the event loop) hands the model thread one
  `RunningBatch.tick`: drop the rows of cancelled requests (a closed stream cancels its request), admit the
  waiting prompts in arrival order while they fit in `max_batch_size` rows (a prompt's rows join together;
  one bigger than that joins an empty batch alone), then run one decode step of every row, and further ones
  in the same call while nothing waits to join and no request is done or cancelled (`MAX_STEPS`).
- A row is done at its end-of-sequence token (kept), at a stop string, or at `max_tokens`; its request is
  answered once all its rows are done: samples by `HFEngine.prompt_samples` (the same cuts and finish
  reasons as the `generate` path) and, when asked for, log-probs by one scoring pass (`add_logprobs`).
- Scoring, program calls and greedy one-token requests (`one_token`) stay micro-batched keyed calls; they
  run in the same thread, between two steps.
- When nothing is decoding, the first arrival waits `batch_wait_ms` for company, so requests sent together
  share one prefill; while the batch decodes, arrivals join at the next step without waiting.

Counters (`stats()`): `batches` counts model calls that start requests (a prefill of joining requests, or a
keyed call), `requests` the requests they started, `largest_batch` the most requests in one model call (a
decode step serves every running request), `running` / `rows` the requests and rows decoding now, `steps`
the decode steps so far, `waiting` the requests not started yet.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dln.lm.continuous import Block, ContinuousDecoder
from serving.backends import one_token
from serving.backends.batcher import MicroBatcher
from serving.backends.hf_engine import HFEngine
from serving.backends.jobs import GenerateJob, Sample
from serving.backends.streaming import RowStreamer

#: decode steps per model-thread call while nothing waits (each call is a round trip to the event loop, which
#: on a busy CPU costs a thread wake-up: a tenth of a small model's decode step or more)
MAX_STEPS = 16


def applies(job: GenerateJob) -> bool:
    """Whether a job decodes in the running batch (not a one-forward `one_token` job, nor an empty one)."""
    return job.params.max_tokens > 0 and not one_token.applies(job.params, [job])


@dataclass(eq=False)
class Request:
    """One generation request: its job, its future, and what its rows have generated so far."""

    job: GenerateJob
    future: asyncio.Future
    rows_per_prompt: int  # 1 when greedy (its n samples are equal), else n
    waiting: deque[int]  # prompts that have not joined the batch yet
    tokens: list[list[list[int]]]  # [prompt][row] generated ids
    streamer: RowStreamer | None = None
    live: int = 0  # rows in the batch
    started: bool = False

    @property
    def done(self) -> bool:
        return not self.waiting and self.live == 0


class RunningBatch:
    """The model thread's side: the decoder, and which request and row each of its rows is."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine = engine
        self.decoder = ContinuousDecoder(engine.decoder, engine.tokenizer.pad_token_id)
        self.rows: dict[int, tuple[Request, int, int]] = {}  # handle -> (request, prompt, row)
        self.requests: list[Request] = []  # requests with rows in the batch, in order of joining
        self.steps = 0  # decode steps so far

    def request(self, job: GenerateJob, future: asyncio.Future) -> Request:
        params = job.params
        rows = 1 if params.greedy else params.n
        prompts = range(len(job.prompts))
        streamer = None
        if job.on_text is not None:
            keys = [(0, p) for p in prompts]
            streamer = RowStreamer(self.engine.tokenizer, self.engine.end_ids, [job], keys, params, rows)
        tokens = [[[] for _ in range(rows)] for _ in prompts]
        return Request(job, future, rows, deque(prompts), tokens, streamer)

    def tick(
        self,
        admit: list[tuple[Request, list[int]]],
        cancelled: list[Request],
        quiet: Callable[[], bool] = lambda: False,
    ) -> list[tuple]:
        """One scheduler call: drop `cancelled`, prefill `admit` (request, its prompts that join now), then
        decode steps, one, or more while `quiet()` says nothing waits to join (at most MAX_STEPS, none once a
        request is done). Returns (request, its samples or the exception that failed it) for each one
        answered."""
        for request in cancelled:
            self.drop(request)
        try:
            if admit:
                self._admit(admit)
            for _ in range(MAX_STEPS):
                if not len(self.decoder):
                    break
                self._advance(self.decoder.step())
                self.steps += 1
                if any(r.done for r in self.requests) or not quiet():
                    break
        except Exception as err:  # a failed forward fails every request in the batch, as a failed call did
            failed, self.requests = self.requests, []
            self.rows.clear()
            self.decoder.evict(list(self.decoder.handles))
            self.decoder.blocks.clear()
            return [(request, err) for request in failed]
        return self._answer([r for r in self.requests if r.done])

    def drop(self, request: Request) -> None:
        """Take a request's rows out of the batch (cancelled, failed or answered)."""
        handles = [h for h, (owner, _, _) in self.rows.items() if owner is request]
        self.decoder.evict(handles)
        for handle in handles:
            del self.rows[handle]
        request.live = 0
        if request in self.requests:
            self.requests.remove(request)

    def _admit(self, admit: list[tuple[Request, list[int]]]) -> None:
        entries, owners = [], []
        device = self.decoder.device
        for request, prompts in admit:
            params = request.job.params
            for p in prompts:
                block = Block.of(params.n, params.temperature, params.top_p, params.seed, device)
                entries.append((request.job.prompts[p], block))
                owners.append((request, p))
            if request not in self.requests:
                self.requests.append(request)
        handles, first = self.decoder.admit(entries)
        for (request, p), per_prompt in zip(owners, handles, strict=True):
            request.live += len(per_prompt)
            for row, handle in enumerate(per_prompt):
                self.rows[handle] = (request, p, row)
        self._advance(first)

    def _advance(self, tokens: dict[int, int]) -> None:
        """Append each row's new token, stream it, and take the rows that are done out of the batch."""
        done = []
        for handle, token in tokens.items():
            request, p, row = self.rows[handle]
            ids = request.tokens[p][row]
            ids.append(token)
            if request.streamer is not None:
                request.streamer.push(request.streamer.rows[p * request.rows_per_prompt + row], token)
            if self._row_done(ids, request):
                done.append(handle)
        self.decoder.evict(done)
        for handle in done:
            self.rows.pop(handle)[0].live -= 1

    def _row_done(self, ids: list[int], request: Request) -> bool:
        params = request.job.params
        if ids[-1] in self.engine.end_ids or len(ids) >= params.max_tokens:
            return True
        if not params.stop:
            return False
        text = self.engine.tokenizer.decode(ids, skip_special_tokens=True)
        return any(stop in text for stop in params.stop)

    def _answer(self, requests: list[Request]) -> list[tuple]:
        """(request, samples) of the requests whose rows are all done; their log-probs in one scoring pass."""
        if not requests:
            return []
        for request in requests:
            self.drop(request)
        try:
            out = {
                (j, p): self.engine.prompt_samples(rows, request.job.params)
                for j, request in enumerate(requests)
                for p, rows in enumerate(request.tokens)
            }
            self.engine.add_logprobs([r.job for r in requests], out)
        except Exception as err:  # e.g. the scoring pass failed: the requests it was for fail
            return [(request, err) for request in requests]
        return [(r, [out[(j, p)] for p in range(len(r.job.prompts))]) for j, r in enumerate(requests)]


class ContinuousBatcher(MicroBatcher):
    """A `MicroBatcher` whose generation requests decode in one running batch (see the module docstring).

    Args:
        engine: the HF engine (its decoder model decodes, its tokenizer cuts and streams).
        max_batch_size: the most rows decoding together, and the most requests per keyed call.
        batch_wait_ms: how long the first request waits for company when nothing is decoding.
    """

    def __init__(self, engine: HFEngine, max_batch_size: int = 32, batch_wait_ms: float = 5.0) -> None:
        super().__init__(max_batch_size, batch_wait_ms)
        self.batch = RunningBatch(engine)
        self._arrivals: deque[Request] = deque()  # requests with prompts that have not joined yet
        self._waiting = 0  # requests in _arrivals not started (a count: stats() may be read from any thread)

    def stats(self) -> dict:
        return {
            **super().stats(),
            "waiting": len(self._pending) + self._waiting,
            "running": len(self.batch.requests),
            "rows": len(self.batch.decoder),
            "steps": self.batch.steps,
        }

    async def generate(self, job: GenerateJob) -> list[list[Sample]]:
        """The job's samples, result[prompt][sample], once all its rows are done."""
        if self._wakeup is None:
            raise RuntimeError("the batcher is not running (start() was not awaited)")
        future = asyncio.get_running_loop().create_future()
        self._arrivals.append(self.batch.request(job, future))
        self._waiting += 1
        self._wakeup.set()
        return await future

    async def stop(self) -> None:
        await super().stop()
        for request in [*self._arrivals, *self.batch.requests]:
            if not request.future.done():
                request.future.set_exception(RuntimeError("the server is shutting down"))

    async def _loop(self) -> None:
        while True:
            if not (self._pending or self._arrivals or len(self.batch.decoder)):
                self._wakeup.clear()
                await self._wakeup.wait()
                if self.batch_wait and len(self._pending) + len(self._arrivals) < self.max_batch_size:
                    await asyncio.sleep(self.batch_wait)
            if self._pending:  # one keyed call (scoring, a program, one-token requests) between two steps
                await self._run(self._take())
            if self._arrivals or len(self.batch.decoder):
                await self._tick()

    async def _tick(self) -> None:
        cancelled = [r for r in self.batch.requests if r.future.done()]
        self._arrivals = deque(r for r in self._arrivals if not r.future.done())
        admit = self._admissions()
        started = [r for r, _ in admit if not r.started]
        for request in started:
            request.started = True
        self._waiting = sum(not r.started for r in self._arrivals)
        if started:
            self._count(len(started))
        running = {*self.batch.requests, *(r for r, _ in admit)} - set(cancelled)
        self.largest_batch = max(self.largest_batch, len(running))
        loop = asyncio.get_running_loop()
        answered = await loop.run_in_executor(self._executor, self.batch.tick, admit, cancelled, self._quiet)
        for request, result in answered:
            if request.future.done():
                continue
            if isinstance(result, Exception):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    def _quiet(self) -> bool:
        """(Read from the model thread.) Nothing waits to join or for a keyed call, and no running request
        was cancelled: the next decode step can follow at once, without a round trip to the event loop."""
        return not (self._pending or self._arrivals or any(r.future.done() for r in self.batch.requests))

    def _admissions(self) -> list[tuple[Request, list[int]]]:
        """The waiting prompts that join at this step, in arrival order, within `max_batch_size` rows."""
        room = self.max_batch_size - len(self.batch.decoder)
        alone = len(self.batch.decoder) == 0  # an empty batch takes one prompt whatever its size
        chosen: list[tuple[Request, list[int]]] = []
        while self._arrivals:
            request = self._arrivals[0]
            prompts = []
            first = alone and not chosen
            while request.waiting and (request.rows_per_prompt <= room or (first and not prompts)):
                prompts.append(request.waiting.popleft())
                room -= request.rows_per_prompt
            if prompts:
                chosen.append((request, prompts))
            if request.waiting:  # the next requests wait their turn
                break
            self._arrivals.popleft()
        return chosen
