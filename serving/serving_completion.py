"""`/v1/completions`: raw prompts, echo scoring, log-probs, n / best_of / reward, streaming.

`echo: true, max_tokens: 0, logprobs: k` scores the prompt: one forward gives every prompt token's log-prob
(the first is None: nothing predicts it), its text, its offset in the prompt and the k most likely tokens at
that position. This is how DLN-2, the `openai:` backend of `dln` and Microsoft's DLN code read log-probs
from a server. The prompt is tokenised as the `hf:` backend tokenises a raw string (with the tokenizer's
special tokens), so a context + continuation scored here equals `hf:`'s `score`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from dln.lm import tokens
from serving.backends.jobs import Sample, ScoreJob, TokenLogprobs
from serving.choice import check_choice_request, choose
from serving.errors import BadRequestError
from serving.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    UsageInfo,
)
from serving.serving_base import SSE_DONE, OpenAIServing, Plan, Ranked, answer_extra, sse, stream_error


class CompletionServing(OpenAIServing):
    async def create(self, request: CompletionRequest) -> CompletionResponse | AsyncIterator[str]:
        target = self.models.resolve(request.model)
        texts, prompts = self._prompts(request.prompt)
        if target.program is not None:
            response = await self._program(request, target.name, target.program, texts, prompts)
            return self._chunks(response) if request.stream else response
        plan = self.plan(request, request.max_tokens)
        self.check_length(prompts, request.max_tokens, "prompt")
        if request.structured_outputs is not None:
            choices = check_choice_request(request)
            picked = await choose(self, prompts, choices, request, request.logprobs, echo=request.echo)
            ranked = [Ranked(samples, None, None, extra) for samples, extra in picked]
            samples = [r.samples for r in ranked]
            response = self._response(request, texts, prompts, ranked, self.usage(prompts, samples))
        elif request.max_tokens == 0:
            response = await self._echo_only(request, texts, prompts, plan)
        elif request.stream and request.logprobs is None and not plan.ranks:
            return self._live_stream(request, texts, prompts, plan)
        else:
            samples = await self.generate(prompts, plan, request.logprobs, echo=request.echo)
            skips = [len(p) if request.echo else 0 for p in prompts]
            ranked = await self.rank(texts, samples, plan, skips)
            response = self._response(request, texts, prompts, ranked, self.usage(prompts, samples))
        return self._chunks(response) if request.stream else response

    # -- prompts -------------------------------------------------------------------------------------
    def _prompts(self, prompt) -> tuple[list[str], list[list[int]]]:
        """(texts, token ids) of a string, a list of strings, a token list or a list of token lists."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise BadRequestError("prompt must not be empty", param="prompt")
        if isinstance(prompt[0], int):
            prompt = [prompt]
        texts, ids = [], []
        vocab = len(self.tokenizer)
        for item in prompt:
            if isinstance(item, str):
                texts.append(item)
                ids.append(self.encode_text(item))
                continue
            if not item:
                raise BadRequestError("a token-id prompt must not be empty", param="prompt")
            if any(t < 0 or t >= vocab for t in item):
                raise BadRequestError(f"prompt token ids must lie in [0, {vocab})", param="prompt")
            texts.append(self.tokenizer.decode(item))
            ids.append(list(item))
        return texts, ids

    # -- the three ways to answer --------------------------------------------------------------------
    async def _echo_only(self, request, texts, prompts, plan: Plan) -> CompletionResponse:
        """max_tokens = 0: nothing is generated; with echo and logprobs the prompt is scored."""
        scored: list[TokenLogprobs | None] = [None] * len(prompts)
        if request.echo and request.logprobs is not None:
            scored = await self.backend.score(ScoreJob(prompts, request.logprobs))
        empty = [Sample("", [], "length", lp) for lp in scored]
        ranked = [Ranked([s] * plan.keep, None, None) for s in empty]
        usage = self.usage(prompts, [])
        return self._response(request, texts, prompts, ranked, usage)

    async def _program(self, request, name, program, texts, prompts) -> CompletionResponse:
        if request.n != 1 or request.best_of not in (None, 1) or request.reward or request.structured_outputs:
            raise BadRequestError(
                f"model {name!r} is a DLN program, which gives one answer per prompt: "
                f"use n=1 without best_of, reward or structured_outputs",
                param="n",
            )
        if request.logprobs is not None or request.echo:
            raise BadRequestError(
                f"model {name!r} is a DLN program: logprobs and echo are not available; "
                f"ask the base model {self.models.base_name!r} for them",
                param="logprobs",
            )
        answers = await self.run_program(name, program, texts)
        samples = [[Sample(a, tokens.encode_continuation(self.tokenizer, a), "stop")] for a in answers]
        choices = [
            CompletionChoice(index=i, text=str(a), finish_reason="stop", **answer_extra(a))
            for i, a in enumerate(answers)
        ]
        return CompletionResponse(model=name, choices=choices, usage=self.usage(prompts, samples))

    def _live_stream(self, request, texts, prompts, plan: Plan) -> AsyncIterator[str]:
        """Token-by-token events from the batched generation; the last event of each choice carries the rest
        of its text (held back while it could become a stop string) and its finish reason."""
        header = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
        }
        n = plan.params.n

        def event(index: int, text: str, finish: str | None = None, usage: UsageInfo | None = None) -> str:
            choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            body = {**header, "choices": [choice]}
            if usage is not None:
                body["usage"] = usage.model_dump()
            return sse(body)

        async def events() -> AsyncIterator[str]:
            sent = {i * n + j: "" for i in range(len(prompts)) for j in range(n)}
            if request.echo:
                for index in sent:
                    yield event(index, texts[index // n])
            samples = None
            try:
                async for item in self.stream_generation(prompts, plan.params):
                    if isinstance(item, tuple):
                        index, text = item
                        sent[index] += text
                        yield event(index, text)
                    else:
                        samples = item
            except Exception as err:
                yield stream_error(err)
                yield SSE_DONE
                return
            usage = self.usage(prompts, samples)
            last = len(sent) - 1
            for i, per_prompt in enumerate(samples):
                for j, sample in enumerate(per_prompt):
                    index = i * n + j
                    yield event(
                        index,
                        sample.text[len(sent[index]) :],
                        sample.finish_reason,
                        usage if index == last else None,
                    )
            if request.stream_options is not None and request.stream_options.include_usage:
                yield sse({**header, "choices": [], "usage": usage.model_dump()})
            yield SSE_DONE

        return events()

    def _response(
        self, request, texts, prompts, ranked: list[Ranked], usage: UsageInfo
    ) -> CompletionResponse:
        choices = []
        for i, (text, ids, group) in enumerate(zip(texts, prompts, ranked, strict=True)):
            for j, sample in enumerate(group.samples):
                logprobs = None
                if request.logprobs is not None and sample.logprobs is not None:
                    logprobs = self._logprobs(text, ids, sample, request.echo)
                extra = group.choice_extra(j)
                choices.append(
                    CompletionChoice(
                        index=i * len(group.samples) + j,
                        text=(text if request.echo else "") + sample.text,
                        logprobs=logprobs,
                        finish_reason=sample.finish_reason,
                        **extra,
                    )
                )
        return CompletionResponse(model=request.model, choices=choices, usage=usage)

    def _logprobs(self, text: str, prompt: list[int], sample: Sample, echo: bool) -> CompletionLogprobs:
        lp = sample.logprobs
        offsets = self.prompt_offsets(text, prompt) if echo else []
        offsets += self.running_offsets(sample.token_ids, len(text) if echo else 0)
        return CompletionLogprobs(
            tokens=[self.token_text(t) for t in lp.token_ids],
            token_logprobs=list(lp.logprobs),
            top_logprobs=[
                None if v is None else self.top_dict(top) for v, top in zip(lp.logprobs, lp.top, strict=True)
            ],
            text_offset=offsets,
        )

    def _chunks(self, response: CompletionResponse) -> AsyncIterator[str]:
        """A finished response as a stream: one event per choice, then the usage and [DONE]."""

        async def events() -> AsyncIterator[str]:
            last = len(response.choices) - 1
            for k, choice in enumerate(response.choices):
                chunk = response.model_copy(
                    update={"choices": [choice], "usage": response.usage if k == last else None}
                )
                yield sse(chunk)
            yield SSE_DONE

        return events()
