"""Completions as token ids: the y-part appended to a trace, and the trace cut out of a sampled completion.

Shared by the online trainer (`reasoning.reason.trainer`) and the offline recipe (`reasoning.reason.recipe`),
so both cut q's samples and append `Answer: y` + EOS by one rule.
"""

from __future__ import annotations

import logging

from reasoning.reason.tasks import format_completion

log = logging.getLogger(__name__)


class CompletionIds:
    """Token-id rules of one tokenizer: `continuation(text)` and `cut_trace(ids)`."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.answer_token_ids = {i for t, i in tokenizer.get_vocab().items() if "Answer" in t}

    def continuation(self, text: str) -> list[int]:
        """`text` as completion ids, EOS appended."""
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.eos]

    def cut_trace(self, ids: list[int]) -> list[int]:
        """The trace part of a sampled completion: the ids before its first `Answer` token, EOS dropped."""
        for i, token in enumerate(ids):
            if token in self.answer_token_ids:
                return ids[:i]
        return ids[:-1] if ids and ids[-1] == self.eos else ids

    def gold_lengths(self, rows: list[dict]) -> list[int]:
        """Token counts of the gold completions (trace, `Answer: y`, EOS) of the rows with a gold trace."""
        return [
            len(self.continuation(format_completion(r["trace"], r["answer"]))) for r in rows if r["trace"]
        ]

    def warn_if_truncating(self, rows: list[dict], max_new_tokens: int) -> float:
        """Log when `max_new_tokens` is shorter than some gold completions, and return their share.

        Why: a sample cut before its `Answer:` line scores as wrong and, in the recipe, gets no ρ, so a
        budget that truncates gold-length answers caps every method's accuracy (word_chain's gold runs to
        about 84 tokens against the configs' default of 48)."""
        lengths = self.gold_lengths(rows)
        cut = sum(n > max_new_tokens for n in lengths)
        if not cut:
            return 0.0
        log.warning(
            "max_new_tokens %d is shorter than %d of %d gold completions (the longest is %d tokens): samples "
            "and held-out answers that long lose their Answer: line; set max_new_tokens to at least %d",
            max_new_tokens,
            cut,
            len(lengths),
            max(lengths),
            max(lengths),
        )
        return cut / len(lengths)
