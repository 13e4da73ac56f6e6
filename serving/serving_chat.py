"""`/v1/chat/completions`: the model's chat template, log-probs, n / best_of / reward, streaming.

Messages are rendered with the tokenizer's chat template and the assistant's turn appended (the `hf:`
backend's rule for chat prompts). A program as `model` answers the last user message; the extension fields
its answer carries (a TFB adapter's `label_probs`) go into the choice, and into the content chunk when
streamed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from dln.lm import tokens
from serving.backends.jobs import Sample
from serving.choice import check_choice_request, choose
from serving.errors import BadRequestError
from serving.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    DeltaMessage,
    UsageInfo,
)
from serving.serving_base import (
    DEFAULT_CHAT_MAX_TOKENS,
    SSE_DONE,
    OpenAIServing,
    Plan,
    Ranked,
    answer_extra,
    sse,
    stream_error,
)


class ChatServing(OpenAIServing):
    async def create(self, request: ChatCompletionRequest) -> ChatCompletionResponse | AsyncIterator[str]:
        target = self.models.resolve(request.model)
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        if target.program is not None:
            response = await self._program(request, target.name, target.program, messages)
            return self._chunks(response) if request.stream else response
        if request.top_logprobs is not None and not request.logprobs:
            raise BadRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        text, ids = self.encode_chat(messages)
        max_tokens = (
            request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
        )
        if max_tokens is None:
            max_tokens = max(0, min(DEFAULT_CHAT_MAX_TOKENS, self.max_model_len - len(ids)))
        self.check_length([ids], max_tokens, "messages")
        plan = self.plan(request, max_tokens)
        top_k = (request.top_logprobs or 0) if request.logprobs else None
        if request.structured_outputs is not None:
            choices = check_choice_request(request)
            ((samples, extra),) = await choose(self, [ids], choices, request, top_k)
            ranked = [Ranked(samples, None, None, extra)]
            response = self._response(request, ranked, self.usage([ids], [samples]), top_k)
        elif max_tokens == 0:
            ranked = [Ranked([Sample("", [], "length")] * plan.keep, None, None)]
            response = self._response(request, ranked, self.usage([ids], []), top_k)
        elif request.stream and top_k is None and not plan.ranks:
            return self._live_stream(request, ids, plan)
        else:
            samples = await self.generate([ids], plan, top_k)
            ranked = await self.rank([text], samples, plan, [0])
            response = self._response(request, ranked, self.usage([ids], samples), top_k)
        return self._chunks(response) if request.stream else response

    async def _program(self, request, name, program, messages) -> ChatCompletionResponse:
        if request.n != 1 or request.best_of not in (None, 1) or request.reward or request.structured_outputs:
            raise BadRequestError(
                f"model {name!r} is a DLN program, which gives one answer: use n=1 without best_of, reward "
                "or structured_outputs",
                param="n",
            )
        if request.logprobs:
            raise BadRequestError(
                f"model {name!r} is a DLN program: logprobs are not available", param="logprobs"
            )
        user = [m["content"] for m in messages if m["role"] == "user"]
        if not user:
            raise BadRequestError(
                f"model {name!r} is a DLN program: it answers the last user message, and there is none",
                param="messages",
            )
        (answer,) = await self.run_program(name, program, [user[-1]])
        prompt_ids = tokens.encode_continuation(self.tokenizer, user[-1])
        sample = Sample(answer, tokens.encode_continuation(self.tokenizer, answer), "stop")
        message = AssistantMessage(content=str(answer))
        choice = ChatChoice(index=0, message=message, finish_reason="stop", **answer_extra(answer))
        return ChatCompletionResponse(
            model=name, choices=[choice], usage=self.usage([prompt_ids], [[sample]])
        )

    def _response(self, request, ranked: list[Ranked], usage: UsageInfo, top_k: int | None):
        group = ranked[0]
        choices = []
        for j, sample in enumerate(group.samples):
            logprobs = None
            if top_k is not None and sample.logprobs is not None:
                logprobs = ChatLogprobs(content=self.chat_logprobs(sample.logprobs))
            extra = group.choice_extra(j)
            choices.append(
                ChatChoice(
                    index=j,
                    message=AssistantMessage(content=sample.text),
                    logprobs=logprobs,
                    finish_reason=sample.finish_reason,
                    **extra,
                )
            )
        return ChatCompletionResponse(model=request.model, choices=choices, usage=usage)

    def _live_stream(self, request, ids: list[int], plan: Plan) -> AsyncIterator[str]:
        """Role first, then content as tokens arrive, then each choice's rest and finish reason."""
        header = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}
        n = plan.params.n

        def event(index: int, delta: DeltaMessage, finish=None, usage=None) -> str:
            choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish)
            return sse(ChatCompletionChunk(**header, choices=[choice], usage=usage))

        async def events() -> AsyncIterator[str]:
            sent = {j: "" for j in range(n)}
            for j in sent:
                yield event(j, DeltaMessage(role="assistant", content=""))
            samples = None
            try:
                async for item in self.stream_generation([ids], plan.params):
                    if isinstance(item, tuple):
                        index, text = item
                        sent[index] += text
                        yield event(index, DeltaMessage(content=text))
                    else:
                        samples = item
            except Exception as err:
                yield stream_error(err)
                yield SSE_DONE
                return
            usage = self.usage([ids], samples)
            for j, sample in enumerate(samples[0]):
                rest = sample.text[len(sent[j]) :]
                if rest:
                    yield event(j, DeltaMessage(content=rest))
                yield event(j, DeltaMessage(), sample.finish_reason, usage if j == n - 1 else None)
            if request.stream_options is not None and request.stream_options.include_usage:
                yield sse(ChatCompletionChunk(**header, choices=[], usage=usage))
            yield SSE_DONE

        return events()

    def _chunks(self, response: ChatCompletionResponse) -> AsyncIterator[str]:
        """A finished response as a stream: per choice the role, the content (with its log-probs), the end."""
        header = {"id": response.id, "created": response.created, "model": response.model}

        async def events() -> AsyncIterator[str]:
            last = len(response.choices) - 1
            for k, choice in enumerate(response.choices):
                extra = choice.model_extra or {}
                parts = [
                    ChatChunkChoice(index=choice.index, delta=DeltaMessage(role="assistant", content="")),
                    ChatChunkChoice(
                        index=choice.index,
                        delta=DeltaMessage(content=choice.message.content),
                        logprobs=choice.logprobs,
                        **extra,
                    ),
                    ChatChunkChoice(
                        index=choice.index, delta=DeltaMessage(), finish_reason=choice.finish_reason
                    ),
                ]
                for p, part in enumerate(parts):
                    usage = response.usage if k == last and p == len(parts) - 1 else None
                    yield sse(ChatCompletionChunk(**header, choices=[part], usage=usage))
            yield SSE_DONE

        return events()
