"""Fakes shared by the DLN-2 step tests: a model whose posterior samples are one known hidden text."""

from __future__ import annotations

from dln.lm.base import LanguageModel, ScoredSample


def content(prompt) -> str:
    """A rendered prompt's text (a chat prompt's user turn, or the raw string)."""
    return prompt[0]["content"] if isinstance(prompt, list) else str(prompt)


class HintedSampleModel(LanguageModel):
    """q(h | x, y) always draws the hidden text `HINTED` (token ids (1, 2), log q = -1); subclasses give the
    scores and generations of their table."""

    uri = "fake:"

    def _sample(self, prompts, options, top_p):
        return [[ScoredSample("HINTED", (1, 2), -1.0) for _ in range(options.n)] for _ in prompts]
