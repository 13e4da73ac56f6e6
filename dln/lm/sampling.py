"""The one sampling rule of every local decoder: the `hf:` backend, the server and the fine-tuning policy.

`sample_ids` decodes a batch of prompts (token ids) in one `generate` call and returns the new token ids of
each row, cut after the first end-of-sequence token (which is kept, so log π(y | x) includes stopping).

- Greedy (temperature 0) has one answer per prompt: it is decoded once and the caller copies it n times
  (transformers refuses `num_return_sequences > 1` without sampling).
- Sampling uses the full distribution (`top_k=0`), not transformers' default top-50, with `temperature`
  and `top_p`: the density of a sample is softmax(top_p_filter(logits / T)), and nothing else.
- Seeded sampling draws each prompt's n rows from a `torch.Generator` of its own (`PerPromptSampler`), so a
  prompt's samples depend only on (prompt, seed, options), never on the rest of the batch, and the batch
  still decodes in one call. The processor applies transformers' own temperature and top-p warpers and the
  same `multinomial`, so it draws exactly what `torch.manual_seed(seed)` and a one-prompt sampling
  `generate` draw (tested against it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper


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


def generate_kwargs(
    tokenizer, *, n: int, temperature: float, top_p: float, max_new_tokens: int, stop: Sequence[str] = ()
) -> tuple[dict, int]:
    """transformers `generate` arguments, and the rows it returns per prompt (1 when greedy)."""
    greedy = temperature == 0.0
    sequences = 1 if greedy else n
    sampling = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": top_p}
    )
    return {
        "max_new_tokens": max_new_tokens,
        "num_return_sequences": sequences,
        "pad_token_id": tokenizer.pad_token_id,
        "stop_strings": list(stop) or None,
        "tokenizer": tokenizer if stop else None,
        **sampling,
    }, sequences


@contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Sample under `seed` without disturbing the global random state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def sampling_logits(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """The logits whose softmax is the sampling distribution: top_p_filter(scores / T), (..., V).

    The one definition of the density a sample was drawn from (`PerPromptSampler` draws from it, the `hf:`
    backend's `sample` scores with it); transformers' own warpers, so unseeded `generate` matches it too.
    """
    shape = scores.shape
    scores = scores.reshape(-1, shape[-1]).float() / temperature
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.reshape(shape)


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


def draw(
    scores: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The next token of each row of `scores` (R, V), drawn from softmax(top_p_filter(scores / T)): (R, 1).

    One `multinomial` over the R rows from `generator` (None: the global random state). The rows one generator
    draws for together are one prompt's block: the random numbers a row gets depend on its place in the
    block, so a block is always drawn whole (`PerPromptSampler`, `dln.lm.continuous`).
    """
    probs = torch.softmax(sampling_logits(scores, temperature, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


class PerPromptSampler(LogitsProcessor):
    """Samples the next token of each prompt's block of rows from that prompt's own generator.

    Used with greedy decoding (which then picks the sampled token, the only one left finite), it draws exactly
    what `torch.manual_seed(seed)` and a one-prompt sampling `generate` would: transformers' temperature and
    top-p warpers, the softmax, and one `multinomial` over the prompt's rows from the same random stream.
    """

    def __init__(
        self, prompts: int, rows_per_prompt: int, temperature: float, top_p: float, seed: int, device
    ) -> None:
        self.rows = rows_per_prompt
        self.temperature = temperature
        self.top_p = top_p
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
    kwargs, rows = generate_kwargs(
        tokenizer, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop
    )
    encoded = [list(p) for p in prompts]
    if seed is not None and temperature > 0:
        sampler = PerPromptSampler(len(encoded), rows, temperature, top_p, seed, device)
        encoded = [ids for ids in encoded for _ in range(rows)]
        for key in ("temperature", "top_k", "top_p"):
            kwargs.pop(key)
        processors = LogitsProcessorList([sampler])
        kwargs.update(do_sample=False, num_return_sequences=1, logits_processor=processors)
    input_ids, mask = pad(encoded, tokenizer.pad_token_id, "left", device)
    output = model.generate(input_ids=input_ids, attention_mask=mask, streamer=streamer, **kwargs)
    ends = end_ids if end_ids is not None else {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    return [trim_after_end(row, ends) for row in output[:, input_ids.shape[1] :].tolist()], rows
