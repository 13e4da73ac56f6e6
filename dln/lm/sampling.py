"""The one sampling rule of every local decoder: the `hf:` backend, the server and the fine-tuning policy.

`sample_ids` decodes a batch of prompts (token ids) in one `generate` call and returns the new token ids of
each row, cut after the first end-of-sequence token (which is kept, so log π(y | x) includes stopping).

- Greedy (temperature 0) has one answer per prompt: it is decoded once and the caller copies it n times.
- Sampling uses the full distribution (no top-k), with `temperature` and `top_p`: the density of a
  sample is softmax(top_p_filter(logits / T)), and nothing else.
- Every sampled token is drawn by `draw`: one float64 uniform u per row and the inverse CDF, token = the
  i with cdf(i - 1) <= u < cdf(i). It is exact to fp32 rounding (`inverse_cdf`) and costs one random
  number per row; `torch.multinomial` (which transformers' `do_sample` calls) draws one exponential per
  vocabulary entry, 49,152 per row: 0.8 ms a row on one CPU core, 27 ms of a 60 ms decode step at batch 32.
  Samples drawn before this sampler (by `multinomial`) differ for the same seed; the request cache keys name
  the sampler (`SAMPLER`), so no old sample is served for a new one.
- `PerPromptSampler` draws inside `generate` (which then decodes greedily, the drawn token being the only one
  left finite). Seeded, each prompt's n rows draw from a `torch.Generator` of their own, so a prompt's
  samples depend only on (prompt, seed, options), never on the rest of the batch; unseeded, the whole batch
  draws from the global torch random state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList


def pad(
    rows: Sequence[Sequence[int]], pad_id: int, side: str, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both (B, max length): left padding for generation, right for scoring."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def trim_after_end(row: list[int], end_ids: set[int] | frozenset[int]) -> list[int]:
    """Cut a generated row after its first end-of-sequence token (kept); the padding after it is dropped."""
    for i, token in enumerate(row):
        if token in end_ids:
            return row[: i + 1]
    return row


def sampling_logits(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The logits whose softmax is the sampling distribution: top_p_filter(scores / T), (..., V).

    The one definition of the density a sample was drawn from (`draw` draws from it, the `hf:` backend's
    `sample` and the fine-tuning policy score with it); the nucleus is `nucleus_threshold`'s.
    """
    shape = scores.shape
    scores = scores.reshape(-1, shape[-1]).float() / temperature
    if top_p < 1.0:
        probs = torch.softmax(scores, dim=-1)
        scores = scores.masked_fill(probs < nucleus_threshold(probs, top_p), -torch.inf)
    return scores.reshape(shape)


NUCLEUS_FIRST_K = 64  # most nuclei of a trained LM fit in its 64 most likely tokens: one cheap topk


def nucleus_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Per row, the probability v* of the nucleus' least likely token: (R, V) -> (R, 1).

    The nucleus is {i : p_i >= v*} with v* = s_d, s the probabilities sorted in descending order and d the
    first rank whose inclusive cumulative sum (in float64) reaches top_p: the most likely tokens down to the
    first that brings the mass to top_p (at least one token), and every token tied with it. This is
    transformers' `TopPLogitsWarper` rule but for ties, which it splits by sort order and this keeps whole.

    Exact without sorting the vocabulary (110 ms for 32 x 49,152 on one core, most of a decode step): the
    first d lies in the top-k as soon as the top-k's mass reaches top_p, so each row takes a top-64, then a
    top-512 and a top-4096 only if its nucleus is wider, and the whole sorted row last.
    """
    rows, vocab = probs.shape
    threshold = torch.empty(rows, 1, dtype=probs.dtype, device=probs.device)
    pending = torch.arange(rows, device=probs.device)
    k = NUCLEUS_FIRST_K
    while pending.numel():
        k = min(k, vocab)
        values = probs[pending].topk(k, dim=-1).values  # sorted, descending
        mass = values.to(torch.float64).cumsum(-1)  # fp32 sums over thousands of tokens drift by 1e-5
        done = (mass[:, -1] >= top_p) | (k == vocab)  # at k == V rounding may leave the sum under top_p
        first = (mass < top_p).sum(-1, keepdim=True).clamp(max=k - 1)
        threshold[pending[done]] = values.gather(1, first)[done]
        pending = pending[~done]
        k *= 8
    return threshold


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """log p(targets) under softmax(top_p_filter(logits / T)): (..., V) logits and (...) ids -> (...) fp32.

    The one token log-prob rule of every scorer (the `hf:` backend, the fine-tuning policy, the server);
    T = 1 and top_p = 1 give the model's own density, -inf marks a token outside the nucleus.
    """
    logits = logits.float()
    if temperature != 1.0 or top_p < 1.0:
        logits = sampling_logits(logits, temperature, top_p)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


SAMPLER = "inverse-cdf-2"  # names `draw`'s algorithm and nucleus rule in request cache keys
CDF_BLOCK = 256


def draw(
    scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The next token of each row of `scores` (R, V), drawn from softmax(top_p_filter(scores / T)): (R, 1).

    One float64 uniform per row from `generator` (None: the global random state), through `inverse_cdf`. The
    rows one generator draws for together are one prompt's block: the number a row gets depends on its place
    in the block, so a block is always drawn whole (`PerPromptSampler`, `dln.lm.continuous`).
    """
    probs = torch.softmax(sampling_logits(scores, temperature, top_p), dim=-1)
    uniforms = torch.rand(probs.shape[0], generator=generator, dtype=torch.float64, device=probs.device)
    return inverse_cdf(probs, uniforms)


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Per row, the i with cdf(i - 1) <= u * total < cdf(i), cdf in float64: (R, V) probs, (R,) u -> (R, 1).

    Two levels, so that the sums stay cheap and no token's mass is rounded away: the cdf of the blocks of
    `CDF_BLOCK` tokens picks the block, the float64 cdf inside it the token. A block's mass is an fp32 sum
    (relative error ~1e-7, as the fp32 softmax itself); one fp32 cumsum over the whole vocabulary would
    instead round every rare token's mass to its 6e-8 grid, and a float64 one costs ~6x more on CPU.
    A token of probability 0 is never picked.
    """
    rows, vocab = probs.shape
    blocks = -(-vocab // CDF_BLOCK)
    extra = blocks * CDF_BLOCK - vocab
    padded = (F.pad(probs, (0, extra)) if extra else probs).reshape(rows, blocks, CDF_BLOCK)
    block_cdf = padded.sum(-1).to(torch.float64).cumsum(-1)  # (R, B)
    target = uniforms.to(torch.float64).unsqueeze(1) * block_cdf[:, -1:]  # (R, 1)
    block = _bucket(block_cdf, target)  # (R, 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inner_cdf = padded[torch.arange(rows, device=probs.device), block[:, 0]].to(torch.float64).cumsum(-1)
    return block * CDF_BLOCK + _bucket(inner_cdf, target - before)


def _bucket(cdf: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The first i with cdf[i] > target, (R, 1); never past the last bucket of nonzero width, where float64
    rounding can put a target equal to the total."""
    index = torch.searchsorted(cdf, target, right=True)
    last = (cdf < cdf[:, -1:]).sum(-1, keepdim=True)
    return torch.minimum(index, last)


class PerPromptSampler(LogitsProcessor):
    """Draws the next token of each prompt's block of rows by `draw` inside `generate`.

    Seeded, each prompt's block draws from a generator of its own; unseeded (`seed=None`), all rows draw
    together from the global random state. Used with greedy decoding, which then picks the drawn token, the
    only one left finite.
    """

    def __init__(
        self, prompts: int, rows_per_prompt: int, temperature: float, top_p: float, seed: int | None, device
    ) -> None:
        self.temperature = temperature
        self.top_p = top_p
        if seed is None:  # one block of every row, drawn from the global random state
            self.rows, self.generators = prompts * rows_per_prompt, [None]
        else:
            self.rows = rows_per_prompt
            self.generators = [torch.Generator(device).manual_seed(seed) for _ in range(prompts)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        picked = torch.cat(
            [
                draw(scores[i * self.rows : (i + 1) * self.rows], self.temperature, self.top_p, generator)
                for i, generator in enumerate(self.generators)
            ]
        )
        return torch.full_like(scores, -torch.inf).scatter_(1, picked, 0.0)


@torch.inference_mode()
def sample_ids(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 16,
    seed: int | None = None,
    stop: Sequence[str] = (),
    streamer=None,
    end_ids: set[int] | None = None,
) -> tuple[list[list[int]], int]:
    """New token ids of every row, prompt-major, and the rows per prompt (1 when greedy, else n).

    Each row is cut after its first token in `end_ids` (default: the tokenizer's EOS and pad ids).
    Unseeded sampling draws from the global torch random state.
    """
    device = next(model.parameters()).device
    rows = 1 if temperature == 0.0 else n  # one greedy answer per prompt, copied by the caller
    encoded = [list(ids) for ids in prompts for _ in range(rows)]
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,  # a sampled token is drawn by `PerPromptSampler`, the only one it leaves finite
        "pad_token_id": tokenizer.pad_token_id,
        "stop_strings": list(stop) or None,
        "tokenizer": tokenizer if stop else None,
    }
    if temperature > 0:
        sampler = PerPromptSampler(len(prompts), rows, temperature, top_p, seed, device)
        kwargs["logits_processor"] = LogitsProcessorList([sampler])
    input_ids, mask = pad(encoded, tokenizer.pad_token_id, "left", device)
    output = model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer, **kwargs)
    ends = end_ids if end_ids is not None else {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return [trim_after_end(row, ends) for row in output[:, input_ids.shape[1] :].tolist()], rows
