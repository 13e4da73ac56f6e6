"""What the serving layer hands a backend and gets back: jobs, sampling parameters, samples, log-probs.

Both backends (`hf_engine` through `batcher`, and `vllm`) take and return these, so the serving layer does
not know which one runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


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

    def keep_top(self, k: int) -> TokenLogprobs:
        """The same log-probs with at most `k` alternatives per position."""
        return TokenLogprobs(self.token_ids, self.logprobs, [t[:k] for t in self.top])


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
