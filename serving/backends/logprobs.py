"""Token log-probs on an HF causal LM: log p(row[i] | row[:i]) for every asked position, in bounded memory.

Log-probs of generated tokens are computed *after* generation by one more forward over prompt + completion,
rather than from `generate`'s per-step scores: those are post-processed (temperature, top-p) and would keep
a (steps, rows, vocab) tensor alive for every batch; the extra forward gives the raw model log-probs (what
OpenAI and vLLM report) and costs about one prefill, only for requests that ask.

Rows that share a prefix of at least `MIN_SHARED` tokens run it once (`row_hidden_states`): the choices of
one multiple-choice question, as lm-eval sends them (context + each continuation, one request each), cost one
forward over the context and one over the continuations on its KV cache, instead of one over each full row:

    h(row) = [h(prefix); h(suffix | cache(prefix))]   (the same hidden states, up to float rounding)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from dln.lm.kv import continue_on_cache, output_cache
from serving.backends.jobs import TokenLogprobs

#: tokens per forward when computing log-probs; bounds the (rows, T, hidden) activations.
TOKEN_BUDGET = 4096
#: positions per vocabulary projection; bounds the (positions, vocab) logits.
LOGIT_BLOCK = 512
#: the shortest common prefix that rows run once rather than each (shorter ones cost less than the cache copy)
MIN_SHARED = 16


@torch.inference_mode()
def token_logprobs(lm, rows: list[list[int]], starts: list[int], top_k: int) -> list[TokenLogprobs]:
    """log p(row[i] | row[:i]) for i >= starts[r] on `lm` (an `HFLanguageModel`), one forward per chunk of
    rows (None at position 0).

    Rows are right-padded, so no real token attends to padding and positions need no offset.
    """
    results: list[TokenLogprobs | None] = [None] * len(rows)
    for chunk, hidden in row_hidden_states(lm, rows):
        for b, i in enumerate(chunk):
            results[i] = row_logprobs(lm.model, hidden[b], rows[i], starts[i], top_k)
    return results  # type: ignore[return-value]


def row_hidden_states(lm, rows: list[list[int]]) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """(row indices, each row's last hidden states (len(row), H)) for every row, in chunks within
    TOKEN_BUDGET. Rows sharing a prefix of MIN_SHARED tokens or more run it once, and those of them that
    share a longer one run the rest of it once more, and so on (a prefix tree: a few-shot preamble, then
    each question's context, then its choices)."""
    yield from _prefix_tree(lm, rows, list(range(len(rows))), 0, None, None)


def _prefix_tree(lm, rows, members: list[int], start: int, cache, prefix_hidden):
    """The hidden states of `members`, whose first `start` tokens (the same for all) are in `cache` (one row;
    None when `start` is 0) with hidden states `prefix_hidden` (start, H)."""
    rests = [rows[m][start:] for m in members]
    groups, alone = shared_prefix_groups(rests)
    for length, local in groups:
        ids = torch.tensor([rests[local[0]][:length]], device=lm.device)
        hidden, grown = _run_after(lm, cache, start, ids, torch.ones_like(ids))
        whole = _joined(prefix_hidden, hidden[0])
        yield from _prefix_tree(lm, rows, [members[i] for i in local], start + length, grown, whole)
    alone = [members[i] for i in alone]
    for chunk in chunks_within_budget([rows[m][start:] for m in alone], start):
        indices = [alone[c] for c in chunk]
        suffixes = [rows[i][start:] for i in indices]
        hidden, _ = _run_after(lm, cache, start, *lm.pad(suffixes, side="right"))
        yield indices, [_joined(prefix_hidden, hidden[b, : len(s)]) for b, s in enumerate(suffixes)]


def _joined(prefix_hidden: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
    """A row's hidden states: its cached prefix's (None at the root), then its own."""
    return hidden if prefix_hidden is None else torch.cat([prefix_hidden, hidden])


def _run_after(lm, cache, start: int, ids: torch.Tensor, mask: torch.Tensor):
    """(hidden states, cache) of right-padded rows `ids` (B, S) after the `start` tokens in `cache` (one row,
    copied for each; `dln.lm.kv.continue_on_cache`), or from scratch when `cache` is None."""
    decoder = lm.model.get_decoder()
    if cache is None:
        out = decoder(input_ids=ids, attention_mask=mask, use_cache=True)
        return out.last_hidden_state, output_cache(out)
    context_mask = mask.new_ones((1, start))
    lengths = torch.tensor([start], device=lm.device)
    index = torch.zeros(ids.shape[0], dtype=torch.long, device=lm.device)
    return continue_on_cache(decoder, cache, context_mask, lengths, index, ids, mask)


def shared_prefix_groups(rows: list[list[int]]) -> tuple[list[tuple[int, list[int]]], list[int]]:
    """([(prefix length, row indices)], the other rows): rows that share their first MIN_SHARED or more
    tokens, grouped in sorted order; each group's prefix leaves every member at least one token of its own."""
    order = sorted(range(len(rows)), key=lambda r: rows[r])
    groups: list[tuple[int, list[int]]] = []
    alone: list[int] = []

    def close(members: list[int]) -> None:
        first, last = rows[members[0]], rows[members[-1]]  # sorted: their common prefix is everyone's
        length = min(_common_prefix(first, last), min(len(rows[m]) for m in members) - 1)
        if len(members) > 1 and length >= MIN_SHARED:
            groups.append((length, members))
        else:
            alone.extend(members)

    members: list[int] = []
    for r in order:
        if members and _common_prefix(rows[members[0]], rows[r]) < MIN_SHARED:
            close(members)
            members = []
        members.append(r)
    if members:
        close(members)
    return groups, alone


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def chunks_within_budget(rows: list[list[int]], cached: int = 0) -> list[list[int]]:
    """Row indices in chunks of similar length (they pad less) whose padded size, `cached` tokens of a
    shared prefix included, stays in TOKEN_BUDGET."""
    order = sorted(range(len(rows)), key=lambda r: len(rows[r]))
    chunks: list[list[int]] = []
    for r in order:
        if chunks and (len(chunks[-1]) + 1) * (cached + len(rows[r])) <= TOKEN_BUDGET:
            chunks[-1].append(r)
        else:
            chunks.append([r])
    return chunks


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
