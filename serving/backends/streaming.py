"""Live text from batched decoding: each row's new text goes to its job's `on_text` as tokens arrive.

`generate` feeds a `RowStreamer` through `put` (all rows each step); the continuous batcher feeds one row's
token at a time through `push`. Both apply the same hold-back rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.streamers import BaseStreamer

from dln.lm.base import truncate_at_stop
from serving.backends.jobs import SamplingParams


@dataclass
class StreamRow:
    """One generated row: the job it belongs to and what of its text has been sent."""

    job: int
    choices: list[int]  # the job's choice indices this row's text goes to (n copies when greedy)
    ids: list[int] = field(default_factory=list)
    sent: int = 0
    done: bool = False


class RowStreamer(BaseStreamer):
    """Hands each row's new text to its job's `on_text` as `generate` produces tokens (batched streaming).

    `generate` calls `put` with the (rows, T_in) prompt first, then with one (rows,) token tensor per step.
    Text is held back while it could still become a stop string or is an incomplete UTF-8 character.
    """

    def __init__(
        self, tokenizer, end_ids: set[int], jobs, keys, params: SamplingParams, rows_per_prompt: int
    ) -> None:
        self.tokenizer, self.end_ids, self.jobs, self.params = tokenizer, end_ids, jobs, params
        n = params.n
        self.rows = [
            StreamRow(j, [p * n + s] if rows_per_prompt == n else [p * n + c for c in range(n)])
            for j, p in keys
            for s in range(rows_per_prompt)
        ]
        self.active = any(jobs[j].on_text is not None for j, _ in keys)
        # a stop string may begin in text already decoded: keep its length minus one back until it cannot
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.started = False

    def put(self, value: torch.Tensor) -> None:
        if not self.started:  # the prompt
            self.started = True
            return
        for row, token in zip(self.rows, value.tolist(), strict=True):
            self.push(row, token)

    def push(self, row: StreamRow, token: int) -> None:
        """One new token of `row`: its job's `on_text` gets whatever of its text can be sent now."""
        callback = self.jobs[row.job].on_text
        if row.done or callback is None:
            return
        if token in self.end_ids:
            row.done = True
            return
        row.ids.append(token)
        text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        safe = self.safe_length(row, text)
        if safe > row.sent:
            for choice in row.choices:
                callback(choice, text[row.sent : safe])
            row.sent = safe

    def safe_length(self, row: StreamRow, text: str) -> int:
        """How much of `text` can be sent now; a stop string found in it ends the row."""
        cut = truncate_at_stop(text, self.params.stop)
        if len(cut) < len(text):
            row.done = True
            return len(cut)
        safe = len(text) - self.hold
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            safe = min(safe, len(text) - 1)
        return safe

    def end(self) -> None:
        pass
