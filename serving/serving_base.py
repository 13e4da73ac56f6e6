"""Serving logic shared by completions and chat: request -> engine jobs -> OpenAI objects.

`OpenAIServing` holds the backend (the micro-batched HF engine, or vLLM's async engine), the served models
and the rewards, and does what both endpoints need: tokenising with `dln.lm.tokens`' rule, checking the
context length, Best-of-N ranking, formatting log-probs and usage, and turning a generation into a
server-sent-event stream.

Streaming: without log-probs or ranking, text is streamed token by token as the batched `generate` produces
it (`GenerateJob.on_text`); with `logprobs`, `best_of` or a `reward` the whole completion is generated (and
scored, and ranked) first and then sent in chunks, since those need the finished samples.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from dln.lm import tokens
from serving.backends.jobs import GenerateJob, Sample, SamplingParams, TokenLogprobs
from serving.errors import BadRequestError, OpenAIError, as_openai_error, error_body
from serving.models import ModelRegistry
from serving.protocol import SamplingFields, TokenLogprob, TopLogprob, UsageInfo
from serving.reward_registry import RewardFn, RewardRegistry

#: new tokens of a chat completion that does not set max_tokens (capped by the room left in the context).
DEFAULT_CHAT_MAX_TOKENS = 256
#: a temperature below this is greedy decoding (vLLM's rule): logits / 1e-313 overflow to inf.
GREEDY_BELOW = 1e-5
_DONE = object()
log = logging.getLogger("serving")


@dataclass
class Plan:
    """How a request's sampling fields become one engine job and the choices returned."""

    params: SamplingParams  # params.n: samples generated per prompt (the candidates)
    keep: int  # choices returned per prompt
    reward: RewardFn | None  # ranks the candidates; None: mean token log-prob ranks them (best_of)

    @property
    def ranks(self) -> bool:
        return self.reward is not None or self.keep < self.params.n


@dataclass
class Ranked:
    """The chosen samples of one prompt, best first, with their rewards and every candidate's reward."""

    samples: list[Sample]
    rewards: list[float] | None
    all_rewards: list[float] | None
    extra: dict | None = None  # extension fields of every choice of the prompt (choice decoding's)

    def choice_extra(self, j: int) -> dict:
        """The extension fields of the j-th choice."""
        extra = dict(self.extra or {})
        if self.all_rewards is not None:
            extra.update(reward=self.rewards[j], rewards=self.all_rewards)
        return extra


class OpenAIServing:
    def __init__(self, backend, models: ModelRegistry, rewards: RewardRegistry, metrics=None) -> None:
        self.backend, self.models, self.rewards, self.metrics = backend, models, rewards, metrics
        self.tokenizer = backend.tokenizer
        self.max_model_len = backend.max_model_len
        self._token_text: dict[int, str] = {}

    # -- requests -> jobs ----------------------------------------------------------------------------
    def plan(self, request: SamplingFields, max_tokens: int) -> Plan:
        if request.best_of is not None and request.best_of < request.n:
            raise BadRequestError(
                f"best_of ({request.best_of}) must be at least n ({request.n})", param="best_of"
            )
        reward = self.rewards.get(request.reward) if request.reward else None
        candidates = request.best_of or request.n
        keep = request.n if request.best_of else (1 if reward else request.n)
        params = SamplingParams(
            n=candidates,
            temperature=0.0 if request.temperature < GREEDY_BELOW else request.temperature,
            top_p=request.top_p,
            max_tokens=max_tokens,
            stop=request.stop_strings(),
            seed=request.seed,
        )
        return Plan(params, keep, reward)

    def check_length(self, prompts: Sequence[list[int]], max_tokens: int, param: str) -> None:
        for ids in prompts:
            if len(ids) + max_tokens > self.max_model_len:
                raise BadRequestError(
                    f"this model's maximum context length is {self.max_model_len} tokens, but the request "
                    f"needs {len(ids) + max_tokens} ({len(ids)} in the prompt, {max_tokens} for the "
                    f"completion); shorten the prompt or lower max_tokens",
                    param=param,
                )

    def encode_text(self, text: str) -> list[int]:
        """A raw prompt's ids, with the tokenizer's special tokens (the `hf:` backend's rule)."""
        return tokens.encode_prompt(self.tokenizer, text, self.models.base_uri)

    def encode_chat(self, messages: list[dict]) -> tuple[str, list[int]]:
        return (
            tokens.render_prompt(self.tokenizer, messages, self.models.base_uri),
            tokens.encode_prompt(self.tokenizer, messages, self.models.base_uri),
        )

    # -- generation, ranking -------------------------------------------------------------------------
    async def generate(self, prompts: list[list[int]], plan: Plan, top_k: int | None, echo: bool = False):
        """Samples per prompt; ranking by mean log-prob needs the log-probs even if not asked for."""
        needs_logprobs = top_k is not None or (plan.ranks and plan.reward is None)
        job = GenerateJob(prompts, plan.params, logprobs=(top_k or 0) if needs_logprobs else None, echo=echo)
        return await self.backend.generate(job)

    async def rank(
        self, prompt_texts: list[str], samples: list[list[Sample]], plan: Plan, prompt_lengths: list[int]
    ) -> list[Ranked]:
        if not plan.ranks:
            return [Ranked(s, None, None) for s in samples]
        ranked = []
        for text, candidates, skip in zip(prompt_texts, samples, prompt_lengths, strict=True):
            if plan.reward is not None:
                scores = await asyncio.to_thread(
                    lambda c=candidates, t=text: [_reward(plan.reward, t, s.text) for s in c]
                )
            else:  # OpenAI's best_of: the highest mean log-prob per generated token
                scores = [_mean_logprob(s.logprobs, skip) for s in candidates]
            order = sorted(range(len(candidates)), key=lambda i: -scores[i])[: plan.keep]
            all_rewards = scores if plan.reward is not None else None
            ranked.append(Ranked([candidates[i] for i in order], [scores[i] for i in order], all_rewards))
        return ranked

    async def stream_generation(self, prompts: list[list[int]], params: SamplingParams) -> AsyncIterator:
        """Yields (choice index, text) while `generate` runs, then the samples (list per prompt)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_text(choice: int, text: str) -> None:  # in the model thread
            loop.call_soon_threadsafe(queue.put_nowait, (choice, text))

        task = asyncio.ensure_future(self.backend.generate(GenerateJob(prompts, params, on_text=on_text)))
        task.add_done_callback(lambda t: (t.cancelled() or t.exception(), queue.put_nowait(_DONE)))
        try:
            while (item := await queue.get()) is not _DONE:
                yield item
            yield task.result()
        finally:  # the client went away (the stream was cancelled or closed): its rows free their slots
            if not task.done():
                task.cancel()

    async def run_program(self, name: str, program, inputs: list[str]) -> list[str]:
        """The program's answers; a str subclass (with `extra`, see `answer_extra`) is kept as it is."""
        answers = await self.backend.run_program(name, program, inputs)
        if len(answers) != len(inputs):
            raise OpenAIError(f"program {name!r} returned {len(answers)} answers for {len(inputs)} inputs")
        return [a if isinstance(a, str) else str(a) for a in answers]

    # -- formatting ----------------------------------------------------------------------------------
    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.tokenizer.decode([token_id])
        return text

    def prompt_offsets(self, text: str, ids: list[int]) -> list[int]:
        """Each prompt token's start in `text`: the end of the token before it (so a leading space belongs
        to its token, and a special token sits where it was inserted)."""
        try:
            encoded = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        except (NotImplementedError, ValueError):
            encoded = None
        if encoded is None or list(encoded.input_ids) != list(ids):
            return self.running_offsets(ids, 0)
        offsets, end = [], 0
        for i, (start, stop) in enumerate(encoded.offset_mapping):
            offsets.append(start if i == 0 else end)
            end = max(end, stop)
        return offsets

    def running_offsets(self, ids: list[int], start: int) -> list[int]:
        offsets = []
        for token_id in ids:
            offsets.append(start)
            start += len(self.token_text(token_id))
        return offsets

    def top_dict(self, top: list[tuple[int, float]]) -> dict[str, float]:
        return {self.token_text(i): lp for i, lp in top}

    def chat_logprobs(self, lp: TokenLogprobs) -> list[TokenLogprob]:
        content = []
        for token_id, logprob, top in zip(lp.token_ids, lp.logprobs, lp.top, strict=True):
            text = self.token_text(token_id)
            content.append(
                TokenLogprob(
                    token=text,
                    logprob=logprob,
                    bytes=list(text.encode()),
                    top_logprobs=[
                        TopLogprob(
                            token=self.token_text(i), logprob=v, bytes=list(self.token_text(i).encode())
                        )
                        for i, v in top
                    ],
                )
            )
        return content

    def usage(self, prompts: Sequence[list[int]], samples: Sequence[Sequence[Sample]]) -> UsageInfo:
        """The usage of a response (counted in the metrics: called once per answered request)."""
        prompt = sum(len(p) for p in prompts)
        completion = sum(len(s.token_ids) for per_prompt in samples for s in per_prompt)
        total = prompt + completion
        usage = UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)
        if self.metrics is not None:
            self.metrics.count_usage(usage)
        return usage


def sse(payload: BaseModel | dict) -> str:
    """One server-sent event."""
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def stream_error(exc: Exception) -> str:
    """An error after the stream has started (the status line is already sent): one event, as vLLM does,
    with the type and code the same error gets before streaming (`errors.as_openai_error`)."""
    err = as_openai_error(exc)
    if err.status_code >= 500 and err is not exc:
        log.error("internal error while streaming", exc_info=exc)
    return sse(error_body(err))


def answer_extra(answer: str) -> dict:
    """The extension fields a program's answer carries for its choice (a TFB adapter's `label_probs`)."""
    extra = getattr(answer, "extra", None)
    return dict(extra) if isinstance(extra, dict) else {}


def _reward(function: RewardFn, prompt: str, completion: str) -> float:
    try:
        return float(function(prompt, completion))
    except Exception as err:  # a broken reward is the server's fault, not the request's
        raise OpenAIError(f"the reward function failed: {type(err).__name__}: {err}") from err


def _mean_logprob(lp: TokenLogprobs | None, skip: int) -> float:
    values = [v for v in (lp.logprobs[skip:] if lp else []) if v is not None]
    return statistics.fmean(values) if values else float("-inf")
