"""Completions as token ids: the y-part appended to a trace, and the trace cut out of a sampled completion.

Shared by the online trainer (`reasoning.reason.trainer`) and the offline recipe (`reasoning.reason.recipe`),
so both cut q's samples and append `Answer: y` + EOS by one rule.
"""

from __future__ import annotations


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
