"""KV-cache helpers shared by the `hf:` backend, the continuous decoder and the server's scorer: which keyword
a forward takes its cache by, a cache's rows copied, and the one prefix-reuse rule (`continue_on_cache`)."""

from __future__ import annotations

import inspect

import torch


def cache_argument(module) -> str:
    """The keyword `module.forward` takes its KV cache by: transformers >= 5.24 renamed `past_key_values`
    to `cache`; older releases (vLLM's venv) need the old name."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def continue_on_cache(decoder, cache, context_mask, lengths, index, ids, mask):
    """(hidden states (P, T, H), their cache) of right-padded continuation rows `ids` (P, T) run on the
    cached contexts: row p on a copy of context `index[p]`'s cache, attending to that context's tokens
    (`context_mask`, (C, Lc)) and to its own, at positions lengths[index[p]] + t; `cache` stays as it was.

    The one prefix-reuse rule: the `hf:` scorer runs each distinct context once and its continuations on it,
    the server (`serving.backends.logprobs`) runs a shared prefix once and each row's rest on it.
    """
    positions = lengths[index].unsqueeze(1) + torch.arange(ids.shape[1], device=ids.device)  # (P, T)
    out = decoder(
        input_ids=ids,
        attention_mask=torch.cat([context_mask[index], mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **{cache_argument(decoder): select_cache(cache, index)},
    )
    return out.last_hidden_state, output_cache(out)


def output_cache(out):
    """The KV cache of a forward's output (transformers >= 5.24 names it `cache`, older `past_key_values`)."""
    return getattr(out, "cache", None) or out.past_key_values


def select_cache(cache, index: torch.Tensor):
    """A new cache holding the given batch rows of `cache` (the original stays usable for other pairs); an
    index that repeats a row repeats it."""
    from transformers import DynamicCache

    selected = DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        selected.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), layer_idx)
    return selected
