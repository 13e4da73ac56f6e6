"""The `vllm:` serving backend: vLLM's async engine (`AsyncLLM`), which batches continuously by itself.

Used by `dln serve --model vllm:<path>` when the `vllm` package is importable (a GPU machine with
`pip install 'dln[vllm]'`, or the CPU build in `.venv-vllm`); otherwise the server falls back to the HF
engine. It offers the same async methods as `hf_backend.HFBackend` (`generate`, `score`,
`run_program`), so the serving layer does not know which one runs. Prompts arrive as token ids
tokenised by the serving layer with `dln.lm.tokens`' rule, as for `hf:`.

Tested against the HF engine's numbers by `tests/serving/backends/test_vllm.py` (marked `vllm`: it runs
where vllm imports, e.g. `.venv-vllm/bin/python -m pytest -m vllm tests/serving/backends/test_vllm.py` with
the CPU build; not part of `make test-main`, and not run on a GPU here). Seeded requests with n > 1 follow
vLLM's semantics (sample k uses seed + k).
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import uuid

from dln.errors import DLNError
from dln.lm.paths import resolve_model_path
from serving.backends.jobs import GenerateJob, Sample, ScoreJob, TokenLogprobs
from serving.protocol import MAX_LOGPROBS


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend:
    """vLLM's `AsyncLLM` behind the serving layer's backend interface.

    Args:
        name: `default`, a local model directory, or a model in the local Hugging Face cache.
        **engine_kwargs: passed to `vllm.AsyncEngineArgs` (e.g. `max_model_len`, `gpu_memory_utilization`).
    """

    kind = "vllm"

    def __init__(self, name: str, **engine_kwargs) -> None:
        try:
            from vllm import AsyncEngineArgs, SamplingParams
            from vllm.inputs import TokensPrompt

            try:
                from vllm.v1.engine.async_llm import AsyncLLM
            except ImportError:  # older releases
                from vllm import AsyncLLMEngine as AsyncLLM
        except ImportError as err:
            raise DLNError(
                f"serving a vllm: model needs the vllm package ({err}); on a GPU machine "
                f"`pip install 'dln[vllm]'`, or serve the hf: model instead"
            ) from err
        from vllm.platforms import current_platform

        from dln.lm.paths import load_tokenizer, local_model_dir
        from dln.lm.vllm import CPU_KV_CACHE_BYTES

        self._SamplingParams, self._TokensPrompt = SamplingParams, TokensPrompt
        path = resolve_model_path(name)
        self.uri = f"vllm:{path}"
        self.tokenizer = load_tokenizer(path, "vllm")
        # the defaults of dln's offline vllm: backend: fp32 and eager on CPU, with a fixed 1 GiB KV cache
        on_cpu = current_platform.is_cpu()
        options = {
            "dtype": "float32" if on_cpu else "auto",
            "enforce_eager": on_cpu,
            "max_logprobs": MAX_LOGPROBS,
        }
        if on_cpu and not {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(engine_kwargs):
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        args = AsyncEngineArgs(model=local_model_dir(path), **{**options, **engine_kwargs})
        self._engine = AsyncLLM.from_engine_args(args)
        self.max_model_len = int(self._engine.model_config.max_model_len)
        self.requests = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        engine = self.__dict__.pop("_engine", None)
        if engine is not None:
            engine.shutdown()
            del engine
            gc.collect()  # while the interpreter is whole: vLLM's __del__ shuts down again

    def stats(self) -> dict:
        return {"requests": self.requests, "batching": "vLLM continuous batching"}

    async def _run(self, ids: list[int], params, on_output=None):
        """Run one request; returns (its outputs by index, its prompt log-probs).

        With n > 1 a yielded RequestOutput may hold only the samples that moved, so the latest output of
        every sample index is kept.
        """
        self.requests += 1
        latest, prompt_logprobs = {}, None
        request_id = f"dln-{uuid.uuid4().hex}"
        async for output in self._engine.generate(
            self._TokensPrompt(prompt_token_ids=ids), params, request_id
        ):
            for completion in output.outputs:
                latest[completion.index] = completion
            prompt_logprobs = output.prompt_logprobs or prompt_logprobs
            if on_output is not None:
                on_output(output)
        return [latest[i] for i in sorted(latest)], prompt_logprobs

    async def generate(self, job: GenerateJob) -> list[list[Sample]]:
        return list(await asyncio.gather(*(self._generate_one(job, p) for p in range(len(job.prompts)))))

    async def _generate_one(self, job: GenerateJob, p: int) -> list[Sample]:
        opts, ids = job.params, job.prompts[p]
        copies = opts.n if opts.greedy else 1  # vLLM refuses n > 1 without sampling: decode once, copy
        params = self._SamplingParams(
            n=1 if opts.greedy else opts.n,
            temperature=opts.temperature,
            top_p=opts.top_p,
            max_tokens=opts.max_tokens,
            stop=list(opts.stop) or None,
            seed=opts.seed,
            logprobs=job.logprobs,
            prompt_logprobs=job.logprobs if job.echo and job.logprobs is not None else None,
        )
        sent: dict[int, int] = {}

        def on_output(output) -> None:  # cumulative outputs: send what is new
            for c in output.outputs:
                for copy in range(copies):
                    index = p * opts.n + c.index + copy
                    if len(c.text) > sent.get(index, 0):
                        job.on_text(index, c.text[sent.get(index, 0) :])
                        sent[index] = len(c.text)

        outputs, prompt_logprobs = await self._run(ids, params, on_output if job.on_text else None)
        samples = []
        for c in outputs:
            logprobs = None
            if job.logprobs is not None:
                prompt = _convert(ids, prompt_logprobs, job.logprobs) if job.echo else None
                gen = _convert(list(c.token_ids), c.logprobs, job.logprobs, first_none=False)
                logprobs = (
                    gen
                    if prompt is None
                    else TokenLogprobs(
                        prompt.token_ids + gen.token_ids, prompt.logprobs + gen.logprobs, prompt.top + gen.top
                    )
                )
            finish = "length" if c.finish_reason == "length" else "stop"
            samples += [Sample(c.text, list(c.token_ids), finish, logprobs) for _ in range(copies)]
        return samples

    async def score(self, job: ScoreJob) -> list[TokenLogprobs]:
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=job.top_k)
        results = await asyncio.gather(*(self._run(ids, params) for ids in job.prompts))
        return [_convert(ids, f, job.top_k) for ids, (_, f) in zip(job.prompts, results, strict=True)]

    async def run_program(self, name: str, program, inputs: list[str]) -> list[str]:
        return list(await asyncio.to_thread(program.predict, inputs))


def _convert(ids: list[int], entries, top_k: int, first_none: bool = True) -> TokenLogprobs:
    """vLLM's per-position {token id: Logprob(logprob, rank)} -> TokenLogprobs."""
    logprobs: list[float | None] = []
    top: list[list[tuple[int, float]]] = []
    for position, (token, entry) in enumerate(zip(ids, entries or [None] * len(ids), strict=True)):
        if entry is None:
            if not (first_none and position == 0):
                raise DLNError("vLLM returned no log-probs for a token; this vLLM version is not supported")
            logprobs.append(None)
            top.append([])
            continue
        logprobs.append(float(entry[token].logprob))
        ranked = sorted(
            ((t, lp) for t, lp in entry.items() if lp.rank is not None and lp.rank <= top_k),
            key=lambda item: item[1].rank,
        )
        top.append([(t, float(lp.logprob)) for t, lp in ranked[:top_k]])
    return TokenLogprobs(list(ids), logprobs, top)
