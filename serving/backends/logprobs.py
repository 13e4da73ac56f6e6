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

from dln.lm.hf import cache_argument, select_cache
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
    TOKEN_BUDGET; rows sharing a prefix of MIN_SHARED tokens or more run it once (`shared_prefix_groups`)."""
    groups, alone = shared_prefix_groups(rows)
    for length, members in groups:
        yield from _on_shared_prefix(lm, rows, length, members)
    for chunk in chunks_within_budget([rows[i] for i in alone]):
        indices = [alone[c] for c in chunk]
        hidden = last_hidden(lm, [rows[i] for i in indices])  # (B, T, H)
        yield indices, [hidden[b, : len(rows[i])] for b, i in enumerate(indices)]


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


def _on_shared_prefix(lm, rows, length: int, members: list[int]):
    """The prefix in one forward, then the members' suffixes (right-padded) on copies of its KV cache."""
    decoder = lm.model.get_decoder()
    prefix = torch.tensor([rows[members[0]][:length]], device=lm.device)
    out = decoder(input_ids=prefix, use_cache=True)
    prefix_hidden, cache = out.last_hidden_state[0], getattr(out, "cache", None) or out.past_key_values
    width = max(len(rows[m]) - length for m in members)
    step = max(1, TOKEN_BUDGET // (length + width))
    for lo in range(0, len(members), step):
        chunk = members[lo : lo + step]
        suffixes = [rows[m][length:] for m in chunk]
        ids, mask = lm.pad(suffixes, side="right")  # (G, S)
        full_mask = torch.cat([mask.new_ones((len(chunk), length)), mask], dim=1)
        positions = length + torch.arange(ids.shape[1], device=lm.device).expand(len(chunk), -1)
        copies = select_cache(cache, torch.zeros(len(chunk), dtype=torch.long, device=lm.device))
        hidden = decoder(
            input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
            **{cache_argument(decoder): copies},
        ).last_hidden_state  # fmt: skip
        yield chunk, [torch.cat([prefix_hidden, hidden[b, : len(s)]]) for b, s in enumerate(suffixes)]


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
