"""The backend interface every algorithm in the project calls.

A prompt is either a raw string (a completion prompt, used as is) or a list of chat messages
`[{"role": ..., "content": ...}]`, to which the backend applies the model's chat template with the
generation prompt appended, so that a continuation is the assistant's reply.

Tokenisation at the context/continuation boundary: `score` tokenises the context and the continuation
separately (no special tokens added to the continuation) and concatenates the ids, so a label always has the
same tokens whatever precedes it. Put the separating space at the start of the continuation
(`" Paris"` after `"The capital is"`), which is where BPE tokenisers put it; the joint string then tokenises
the same way and backends that only see the joined text (`openai:`) agree.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Message = dict[str, str]
Prompt = str | list[Message]

DEFAULT_MAX_TOKENS = 128


@dataclass(frozen=True)
class SamplingOptions:
    """Everything that changes a `generate` answer; also the cache key's content."""

    n: int = 1
    temperature: float = 0.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        from dln.errors import DLNError

        if self.n < 1:
            raise DLNError(f"n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise DLNError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_tokens < 0:
            raise DLNError(f"max_tokens must be >= 0, got {self.max_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ScoredSample:
    """One sample with the exact token ids drawn and its log-probability under the distribution that drew
    them: log q(ids | prompt) = Σ_t log softmax(top_p_filter(logits_t / T))[id_t], the end-of-sequence
    token included when the model stopped (so the probability of stopping there counts)."""

    text: str
    token_ids: tuple[int, ...]
    logprob: float


class LanguageModel(ABC):
    """`generate` samples text, `score` returns token log-probs, `classify` is derived from `score`."""

    #: a stable identifier of backend + model, used in cache keys (e.g. "hf:/path/to/model").
    uri: str
    #: names the algorithm that draws sampled tokens, in the cache keys of samples: a new sampler draws
    #: other samples for the same seed and must not be served an old one's ("": the engine's own).
    sampler: str = ""

    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        stop: Sequence[str] | str | None = None,
        seed: int | None = None,
    ) -> list[list[str]]:
        """Return `n` completions for each prompt (greedy when temperature is 0).

        Stop strings end a completion and are not included in it. With a seed, each prompt's samples are
        reproducible on their own, whatever else is in the batch.
        """
        if isinstance(stop, str):
            stop = [stop]
        options = SamplingOptions(n, float(temperature), int(max_tokens), tuple(stop or ()), seed)
        return self._generate(list(prompts), options)

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log p(continuation token | context, earlier continuation tokens), one list per pair."""
        if len(contexts) != len(continuations):
            from dln.errors import DLNError

            raise DLNError(
                f"score needs one continuation per context, got {len(contexts)} contexts and "
                f"{len(continuations)} continuations"
            )
        return self._score(list(contexts), list(continuations))

    def sample(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        seed: int | None = None,
    ) -> list[list[ScoredSample]]:
        """`n` samples per prompt with their token ids and exact log-probs under the sampling distribution.

        An importance weight needs log q of the very sample drawn: scoring the decoded text again (at T = 1,
        after re-tokenising) gives the density of another distribution. Greedy samples (T = 0) have log q 0.
        """
        if not 0 < top_p <= 1:
            from dln.errors import DLNError

            raise DLNError(f"top_p must be in (0, 1], got {top_p}")
        options = SamplingOptions(n, float(temperature), int(max_tokens), (), seed)
        return self._sample(list(prompts), options, float(top_p))

    def score_ids(
        self, contexts: Sequence[Prompt], continuations: Sequence[Sequence[int]]
    ) -> list[list[float]]:
        """Per-token log p(id | context, earlier ids) of id continuations (`ScoredSample.token_ids`)."""
        if len(contexts) != len(continuations):
            from dln.errors import DLNError

            raise DLNError(
                f"score_ids needs one continuation per context, got {len(contexts)} and {len(continuations)}"
            )
        return self._score_ids(list(contexts), [list(c) for c in continuations])

    def _sample(
        self, prompts: list[Prompt], options: SamplingOptions, top_p: float
    ) -> list[list[ScoredSample]]:
        from dln.errors import DLNError

        raise DLNError(
            f"{self.uri} cannot return the token ids it sampled with their log-probs, which importance "
            f"weights (DLN-2's hidden layer) need; use an hf: model for this job"
        )

    def _score_ids(self, contexts: list[Prompt], continuations: list[list[int]]) -> list[list[float]]:
        from dln.errors import DLNError

        raise DLNError(f"{self.uri} cannot score token ids; use an hf: model for this job")

    def classify(self, prompts: Sequence[Prompt], labels: Sequence[str]) -> np.ndarray:
        """log p(label | prompt) normalised over the label set: an array (len(prompts), len(labels)).

        A multi-token label is scored by its full sequence log-prob. Every row sums to 1 in probability
        space. Backends reuse each prompt's computation across its labels.
        """
        labels = list(labels)
        if not labels:
            from dln.errors import DLNError

            raise DLNError("classify needs at least one label")
        contexts = [p for p in prompts for _ in labels]
        token_logprobs = self.score(contexts, labels * len(prompts))
        totals = np.array([sum(t) for t in token_logprobs], dtype=np.float64).reshape(
            len(prompts), len(labels)
        )
        return totals - np.logaddexp.reduce(totals, axis=1, keepdims=True)

    @abstractmethod
    def _generate(self, prompts: list[Prompt], options: SamplingOptions) -> list[list[str]]: ...

    @abstractmethod
    def _score(self, contexts: list[Prompt], continuations: list[str]) -> list[list[float]]: ...

    def close(self) -> None:
        """Release what the backend holds (engines, connections); the default holds nothing."""


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Cut `text` at the earliest stop string, which is dropped (OpenAI's convention)."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]
