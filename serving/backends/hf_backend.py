"""`HFBackend`: the async face of the HF engine that the serving layer calls.

Generation decodes in one running batch (`continuous.ContinuousBatcher`: a request joins at the next decode
step); scoring, program calls and greedy one-token requests are micro-batched keyed calls
(`batcher.MicroBatcher`), all in one model thread. `continuous=False` (`dln serve --no-continuous-batching`)
micro-batches generation too: requests with equal sampling options share one `generate` call.
"""

from __future__ import annotations

from dln.lm.continuous import supports
from serving.backends import continuous
from serving.backends.batcher import MicroBatcher
from serving.backends.continuous import ContinuousBatcher
from serving.backends.hf_engine import HFEngine
from serving.backends.jobs import GenerateJob, Sample, ScoreJob, TokenLogprobs


class HFBackend:
    """Every model call of the served HF model, batched in one model thread.

    Args:
        lm: a `dln.lm.hf.HFLanguageModel` (a cached one is unwrapped).
        max_batch_size: the most rows decoding together (and requests per keyed call).
        batch_wait_ms: how long a request waits for others to share its model call (see `MicroBatcher`).
        warmup: run one tiny generation at start, so the first request does not pay for the first forward.
        continuous: continuous batching of generation (for models `dln.lm.continuous.supports`).
    """

    kind = "hf"

    def __init__(
        self,
        lm,
        *,
        max_batch_size: int = 32,
        batch_wait_ms: float = 5.0,
        warmup: bool = True,
        continuous: bool = True,
    ) -> None:
        lm = getattr(lm, "inner", lm)  # the server answers every request itself: no request cache
        self.engine = HFEngine(lm)
        self.uri = lm.uri
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.continuous = continuous and supports(self.engine.decoder)
        if self.continuous:
            self.batcher = ContinuousBatcher(self.engine, max_batch_size, batch_wait_ms)
        else:
            self.batcher = MicroBatcher(max_batch_size, batch_wait_ms)
        self.warmup = warmup  # run one tiny generation at start, before the first request

    async def start(self) -> None:
        await self.batcher.start()
        if self.warmup:
            await self.batcher.run_alone(self.engine.warmup)

    async def stop(self) -> None:
        await self.batcher.stop()

    def stats(self) -> dict:
        return self.batcher.stats()

    async def generate(self, job: GenerateJob) -> list[list[Sample]]:
        if self.continuous and continuous.applies(job):
            return await self.batcher.generate(job)
        return await self.batcher.submit(("generate", job.params), self.engine.generate, job)

    async def score(self, job: ScoreJob) -> list[TokenLogprobs]:
        return await self.batcher.submit(("score",), self.engine.score, job)

    async def run_program(self, name: str, program, inputs: list[str]) -> list[str]:
        def run(batches: list[list[str]]) -> list[list[str]]:
            return predict_batches(program, batches)

        return await self.batcher.submit(("program", name), run, inputs)


def predict_batches(program, batches: list[list[str]]) -> list[list[str]]:
    """Every request's answers from one `program.predict` call over all their inputs."""
    flat = [x for inputs in batches for x in inputs]
    answers = list(program.predict(flat))
    result, start = [], 0
    for inputs in batches:
        result.append(answers[start : start + len(inputs)])
        start += len(inputs)
    return result
