"""Token log-probs on an HF causal LM: log p(row[i] | row[:i]) for every asked position, in bounded memory.

Log-probs of generated tokens are computed *after* generation by one more forward over prompt + completion,
rather than from `generate`'s per-step scores: those are post-processed (temperature, top-p) and would keep
a (steps, rows, vocab) tensor alive for every batch; the extra forward gives the raw model log-probs (what
OpenAI and vLLM report) and costs about one prefill, only for requests that ask.
"""

from __future__ import annotations

import torch

from serving.backends.jobs import TokenLogprobs

#: tokens per forward when computing log-probs; bounds the (rows, T, hidden) activations.
TOKEN_BUDGET = 4096
#: positions per vocabulary projection; bounds the (positions, vocab) logits.
LOGIT_BLOCK = 512


@torch.inference_mode()
def token_logprobs(lm, rows: list[list[int]], starts: list[int], top_k: int) -> list[TokenLogprobs]:
    """log p(row[i] | row[:i]) for i >= starts[r] on `lm` (an `HFLanguageModel`), one forward per chunk of
    rows (None at position 0).

    Rows are right-padded, so no real token attends to padding and positions need no offset.
    """
    results: list[TokenLogprobs | None] = [None] * len(rows)
    for chunk in chunks_within_budget(rows):
        hidden = last_hidden(lm, [rows[i] for i in chunk])  # (B, T, H)
        for b, i in enumerate(chunk):
            results[i] = row_logprobs(lm.model, hidden[b], rows[i], starts[i], top_k)
    return results  # type: ignore[return-value]


def chunks_within_budget(rows: list[list[int]]) -> list[list[int]]:
    """Row indices in chunks of similar length (they pad less) whose padded size stays in TOKEN_BUDGET."""
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    chunks: list[list[int]] = []
    for r in order:
        if chunks and (len(chunks[-1]) + 1) * len(rows[r]) <= TOKEN_BUDGET:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    return chunks


def last_hidden(lm, rows: list[list[int]]) -> torch.Tensor:
    ids, mask = lm.pad(rows, side="right")
    return lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state


def row_logprobs(model, hidden: torch.Tensor, ids: list[int], start: int, top_k: int) -> TokenLogprobs:
    """One row's log-probs from its hidden states, projected to the vocabulary LOGIT_BLOCK positions at a
    time."""
    head = model.get_output_embeddings()
    targets = torch.tensor(ids, device=hidden.device)
    logprobs: list[float | None] = [None] if start == 0 else []
    top: list[list[tuple[int, float]]] = [[]] if start == 0 else []
    # token i is predicted by position i - 1
    for lo in range(max(start, 1), len(ids), LOGIT_BLOCK):
        hi = min(lo + LOGIT_BLOCK, len(ids))
        block = torch.log_softmax(head(hidden[lo - 1 : hi - 1]).float(), dim=-1)  # (P, V)
        logprobs.extend(block.gather(1, targets[lo:hi, None]).squeeze(1).tolist())
        if top_k:
            values, indices = block.topk(top_k, dim=-1)
            top.extend(
                list(zip(i_row, v_row, strict=True))
                for i_row, v_row in zip(indices.tolist(), values.tolist(), strict=True)
            )
        else:
            top.extend([] for _ in range(hi - lo))
    return TokenLogprobs(ids[start:], logprobs, top)
