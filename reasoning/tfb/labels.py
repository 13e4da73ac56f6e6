"""The label scoring every TFB step shares: log p(label | F(x, π)) normalised over the example's label set.

The answer is a label scored like `LanguageModel.classify`: the chat-rendered prompt F(x, π) (the
`CLASSIFY_TEMPLATE` of `dln.layers`) is followed by the label's tokens, and

    log p(y | x) = log p_θ(y | F(x, π)) - log Σ_{y' ∈ Y(x)} p_θ(y' | F(x, π))

is normalised over the example's label set Y(x). Prompts are encoded with `dln.lm.tokens` and padded with
`dln.lm.sampling.pad` (the rules of the `hf:` backend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dln.errors import DLNError
from dln.layers import CLASSIFY_TEMPLATE, LanguageLayer
from dln.lm import tokens
from reasoning.tfb.config import DEFAULT_PROMPT

if TYPE_CHECKING:
    import torch


class LabelScorer:
    """log p(label | F(x, π)) normalised over the label set, for a (PEFT) causal LM, with or without grad.

    Prompts are encoded with `dln.lm.tokens` (the rule of the `hf:` backend). Single-token label sets take
    one forward per example (left padding with explicit position ids, logits of the last position only);
    otherwise each (example, label) sequence is run and its label tokens summed.
    """

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        *,
        prompt: str = DEFAULT_PROMPT,
        template: str = CLASSIFY_TEMPLATE,
        batch_size: int = 16,
    ) -> None:
        if not labels:
            raise DLNError("a label task needs at least one label")
        self.model, self.tokenizer, self.labels = model, tokenizer, list(labels)
        self.layer = LanguageLayer(prompt, template)
        self.batch_size = batch_size
        self.label_ids = [
            tokens.encode_continuation(tokenizer, self.layer.label_text(y)) for y in self.labels
        ]
        if any(not ids for ids in self.label_ids):
            raise DLNError(f"a label encodes to no tokens: {self.labels}")
        self.single_token = all(len(ids) == 1 for ids in self.label_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, inputs: list[str]) -> list[list[int]]:
        return [tokens.encode_prompt(self.tokenizer, self.layer.render(x)) for x in inputs]

    def label_mask(self, row_labels: list[list[str]] | None, n: int) -> torch.Tensor:
        """(N, K) bool: which of the task's labels each example offers (all when rows carry none)."""
        import torch

        if row_labels is None:
            return torch.ones(n, len(self.labels), dtype=torch.bool)
        index = {y: k for k, y in enumerate(self.labels)}
        mask = torch.zeros(n, len(self.labels), dtype=torch.bool)
        for i, row in enumerate(row_labels):
            for y in row or self.labels:
                if y not in index:
                    raise DLNError(f"label {y!r} is not in the adapter's label set {self.labels}")
                mask[i, index[y]] = True
        return mask

    def log_probs(self, encoded: list[list[int]], mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K) log-probs normalised over each row's allowed labels; differentiable under grad mode."""
        import torch

        out = []
        for start in range(0, len(encoded), self.batch_size):
            rows = encoded[start : start + self.batch_size]
            out.append(self._batch_totals(rows) if self.single_token else self._batch_totals_multi(rows))
        totals = torch.cat(out)  # (N, K) unnormalised sequence log-probs
        if mask is not None:
            totals = totals.masked_fill(~mask, float("-inf"))
        return totals - torch.logsumexp(totals, dim=1, keepdim=True)

    def _forward(self, rows: list[list[int]], keep_last: bool) -> torch.Tensor:

        from dln.lm.sampling import pad

        # left padding: the last column is every row's last real token
        ids, attn = pad(rows, self.pad_id, "left")
        positions = (attn.cumsum(-1) - 1).clamp(min=0)  # the positions the rows have unpadded
        device = next(self.model.parameters()).device
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            position_ids=positions.to(device),
            logits_to_keep=1 if keep_last else 0,
        )
        return out.logits.float()  # (B, 1 or T, V)

    def _batch_totals(self, rows: list[list[int]]) -> torch.Tensor:
        import torch

        logits = self._forward(rows, keep_last=True)[:, -1]  # (B, V)
        label_ids = torch.tensor([ids[0] for ids in self.label_ids], device=logits.device)
        return torch.log_softmax(logits, dim=-1)[:, label_ids].cpu()  # (B, K)

    def _batch_totals_multi(self, rows: list[list[int]]) -> torch.Tensor:
        import torch

        seqs = [r + lab for r in rows for lab in self.label_ids]
        logp = torch.log_softmax(self._forward(seqs, keep_last=False), dim=-1)  # (B*K, T, V)
        width = logp.shape[1]
        totals = []
        for j, lab in enumerate(lab for _ in rows for lab in self.label_ids):
            # left padded: label token t sits at column width - len(lab) + t, predicted by the column before
            cols = torch.arange(width - len(lab), width, device=logp.device)
            totals.append(logp[j, cols - 1, torch.tensor(lab, device=logp.device)].sum())
        return torch.stack(totals).reshape(len(rows), len(self.label_ids)).cpu()
