"""Step-level decoding for continuous batching: rows join and leave a running batch between decode steps.

Why not `generate`: it decodes a fixed batch to its end, so a request that arrives meanwhile waits for all of
it. Why not transformers' own continuous batching (`init_continuous_batching`): it admits requests between
steps, but samples every row with one `do_sample` for the whole manager and one `multinomial` from the
global random state (no seeded generator per request, no greedy row next to a sampled one, no stop
strings), so it cannot draw what `dln.lm.sampling` draws; on this project's CPU a second 3-prompt, 8-token
`generate_batch` of the default model (its manager and paged cache set up each call) also took 14 s, though
its greedy tokens equalled `generate`'s. This module keeps `generate`'s numerics and `dln.lm.sampling`'s
draws, one decode step at a time, on transformers' `DynamicCache`.

The rule:

- The batch is left-padded; every row has its own attention-mask row and its own position ids (its count of
  real tokens, `generate`'s rule), so a row attends to exactly its own tokens at positions 0..L-1, as in a
  solo run (equal up to the last bits of a padded fp32 matmul).
- `admit` prefills the new rows (left-padded among themselves) into a fresh cache and merges it into the
  running one: per layer, the narrower side's keys/values (B, H, T, D) are left-padded with zeros, which the
  mask hides.
- `step` runs one forward of every live row on its last token and picks each row's next token.
- `evict` keeps the other rows (`index_select` on the cache) and cuts leading columns no row attends to.
- Picking: a greedy row (`Block` with temperature 0) takes the argmax, as `generate`'s greedy search does;
  the rows of one sampled prompt form a `Block` and draw together by `sampling.draw` from the block's
  generator, as `PerPromptSampler` does inside `generate`. A finished row keeps its place in its block's
  draw (filled with a live row's logits; no other row's draw depends on them), as finished rows go on being
  sampled inside `generate`: so a seeded prompt's rows draw what they draw alone, whoever joins or leaves.

Only full-attention decoders (`supports`): a sliding-window cache layer keeps its own position count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dln.lm import sampling
from dln.lm.kv import cache_argument, output_cache


@dataclass(eq=False)
class Block:
    """The rows of one prompt that pick their next token together.

    Args:
        size: rows of the prompt (1 when greedy: its n answers are equal).
        temperature: 0 for greedy.
        top_p: the nucleus mass.
        generator: the prompt's own generator (a seeded request); None draws from the global random state.
    """

    size: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    @classmethod
    def of(cls, n: int, temperature: float, top_p: float, seed: int | None, device) -> Block:
        """A prompt's block for a request's sampling options (`sample_ids`' rule)."""
        if temperature == 0.0:
            return cls()
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        return cls(n, temperature, top_p, generator)


def supports(model) -> bool:
    """Whether `ContinuousDecoder` can decode with `model`: every layer attends to the whole past."""
    config = model.config
    types = getattr(config, "layer_types", None)
    if types:
        return all(t == "full_attention" for t in types)
    return getattr(config, "sliding_window", None) is None


class ContinuousDecoder:
    """A running batch of rows over one `DynamicCache` (see the module docstring).

    Rows are named by the handles `admit` returns; `admit` and `step` return {handle: next token}.

    Args:
        model: a transformers causal LM.
        pad_id: the token left padding is filled with (never attended to).
    """

    def __init__(self, model, pad_id: int) -> None:
        self.model, self.pad_id = model, pad_id
        self.device = next(model.parameters()).device
        self._cache_argument = cache_argument(model)
        self.handles: list[int] = []  # the handle of each batch row
        self.blocks: dict[int, tuple[Block, int]] = {}  # handle -> (its block, its place in the block)
        self._next_handle = 0
        self._reset()

    def _reset(self) -> None:
        self.cache = None
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)  # (B, W)
        self.positions = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) each row's next position
        self.last = torch.zeros(0, dtype=torch.long, device=self.device)  # (B,) each row's next input token

    def __len__(self) -> int:
        return len(self.handles)

    @torch.inference_mode()
    def admit(self, entries: Sequence[tuple[Sequence[int], Block]]) -> tuple[list[list[int]], dict[int, int]]:
        """Prefill `block.size` rows of each (prompt ids, block) and add them to the batch.

        Returns each entry's row handles and every new row's first token.
        """
        rows, handles = [], []
        for prompt, block in entries:
            handles.append(list(range(self._next_handle, self._next_handle + block.size)))
            self._next_handle += block.size
            for place, handle in enumerate(handles[-1]):
                self.blocks[handle] = (block, place)
                rows.append(list(prompt))
        new = [h for per_entry in handles for h in per_entry]
        ids, mask = sampling.pad(rows, self.pad_id, "left", self.device)  # (k, L)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
        )
        self._merge(output_cache(out), mask)
        self.handles += new
        tokens = self._pick(out.logits[:, -1].float(), new)  # (k,)
        self.positions = torch.cat([self.positions, mask.sum(dim=1)])
        self.last = torch.cat([self.last, tokens])
        return handles, dict(zip(new, tokens.tolist(), strict=True))

    def _merge(self, cache, mask: torch.Tensor) -> None:
        """Append a prefilled cache's rows to the running cache, left-padding the narrower one."""
        if not self.handles:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width, -2), _left_pad(new.keys, width, -2)])
            old.values = torch.cat([_left_pad(old.values, width, -2), _left_pad(new.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(mask, width, -1)])

    @torch.inference_mode()
    def step(self) -> dict[int, int]:
        """One decode step of every live row: {handle: its next token}."""
        if not self.handles:
            return {}
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.handles), 1))], dim=1)  # (B, W + 1)
        out = self.model(
            input_ids=self.last[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_argument: self.cache},
        )
        self.positions = self.positions + 1
        self.last = self._pick(out.logits[:, -1].float(), self.handles)
        return dict(zip(self.handles, self.last.tolist(), strict=True))

    def evict(self, handles: Sequence[int]) -> None:
        """Drop these rows (finished or cancelled); the others decode on unchanged."""
        gone = set(handles)
        keep = [i for i, h in enumerate(self.handles) if h not in gone]
        for handle in gone:
            self.blocks.pop(handle, None)
        if len(keep) == len(self.handles):
            return
        self.handles = [self.handles[i] for i in keep]
        if not keep:
            return self._reset()
        index = torch.tensor(keep, device=self.device)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        first = int(self.mask.any(dim=0).long().argmax())  # leading columns that only padded the gone rows
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]

    def _pick(self, logits: torch.Tensor, handles: list[int]) -> torch.Tensor:
        """Each row's next token (B,) from its logits (B, V): the argmax, or its block's draw when sampled."""
        tokens = logits.argmax(dim=-1)
        places_of: dict[Block, dict[int, int]] = {}  # a sampled block -> {place: batch row}
        for row, handle in enumerate(handles):
            block, place = self.blocks[handle]
            if block.temperature > 0:
                places_of.setdefault(block, {})[place] = row
        for block, places in places_of.items():
            filler = next(iter(places.values()))  # stands in for the block's finished rows
            index = torch.tensor([places.get(p, filler) for p in range(block.size)], device=logits.device)
            drawn = sampling.draw(logits[index], block.temperature, block.top_p, block.generator)[:, 0]
            tokens[torch.tensor(list(places.values()))] = drawn[torch.tensor(list(places))]
        return tokens


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`tensor` with zeros before its entries along `dim` (-1 or -2) up to `width`."""
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    return F.pad(tensor, (missing, 0) if dim == -1 else (0, 0, missing, 0))
