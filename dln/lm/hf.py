"""transformers backend: batched generation, and scoring that computes each distinct context once.

Scoring is the hot path of every algorithm here (a prompt against many labels, many hidden states against
one answer). `_score` therefore runs each distinct context once, keeps its key/value cache, and feeds only
the continuation tokens of every (context, continuation) pair on top of the cached rows. Contexts are
right-padded so that no real token ever attends to padding.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from dln.errors import DLNError
from dln.lm import tokens
from dln.lm.base import LanguageModel, Prompt, SamplingOptions, truncate_at_stop
from dln.lm.registry import resolve_model_path


class HFLanguageModel(tokens.TokenizedPrompts, LanguageModel):
    """A transformers causal LM on CPU (fp32) or GPU (bf16).

    Args:
        name: `default`, a local model directory, or a model already in the local Hugging Face cache.
        device: "cpu", "cuda", ...; default: cuda when available.
        dtype: torch dtype name; default: bfloat16 on GPU, float32 on CPU.
        batch_size: prompts per generate call and contexts per scoring forward.
        pair_batch_size: (context, continuation) pairs per continuation forward.
        model: an already loaded model to wrap (trainers pass their policy), with `tokenizer`.
    """

    def __init__(
        self,
        name: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
        pair_batch_size: int = 64,
        model=None,
        tokenizer=None,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.pair_batch_size = pair_batch_size
        if model is not None:
            self.model, self.tokenizer, self.uri = model, tokenizer, f"hf:{name}"
        else:
            path = resolve_model_path(name)
            self.uri = f"hf:{path}{_adapter_version(path)}"
            self.tokenizer, self.model = _load(path, self.device, dtype)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        # transformers >= 5.24 renamed `past_key_values` to `cache`; older releases (vLLM's venv) need the old
        # name.
        self._cache_argument = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        )

    # -- text <-> ids --------------------------------------------------------------------------------
    def _pad(self, rows: Sequence[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- generation ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate(self, prompts: list[Prompt], options: SamplingOptions) -> list[list[str]]:
        if options.max_tokens == 0:
            return [[""] * options.n for _ in prompts]
        encoded = [self.encode_prompt(p) for p in prompts]
        return [
            out for chunk in _chunks(encoded, self.batch_size) for out in self._generate_batch(chunk, options)
        ]

    def _generate_batch(self, encoded: list[list[int]], options: SamplingOptions) -> list[list[str]]:
        kwargs, sequences = generate_kwargs(self.tokenizer, options)
        copies = options.n // sequences
        if options.seed is not None and not options.greedy:
            # Seeded: each prompt's n rows are drawn from a generator of its own, so a prompt's samples do not
            # depend on the rest of the batch, and the batch still decodes in one call.
            sampler = PerPromptSampler(len(encoded), sequences, options, self.device)
            encoded = [ids for ids in encoded for _ in range(sequences)]
            kwargs = {
                **kwargs,
                "do_sample": False,
                "num_return_sequences": 1,
                "logits_processor": LogitsProcessorList([sampler]),
            }
            for key in ("temperature", "top_k", "top_p"):
                kwargs.pop(key, None)
        input_ids, attention_mask = self._pad(encoded, side="left")
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        # (B * sequences, T_in + T_new)
        texts = self.tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        texts = [truncate_at_stop(t, options.stop) for t in texts]
        prompts = len(texts) // sequences
        return [texts[i * sequences : (i + 1) * sequences] * copies for i in range(prompts)]

    # -- scoring -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _score(self, contexts: list[Prompt], continuations: list[str]) -> list[list[float]]:
        continuation_ids = [self.encode_continuation(c) for c in continuations]
        context_ids: dict[str, list[int]] = {}
        pairs_of: dict[str, list[int]] = {}  # distinct context -> the pairs (with a continuation) that use it
        for i, context in enumerate(contexts):
            key = tokens.context_key(self.tokenizer, context, self.uri)
            if key not in context_ids:
                context_ids[key] = self.encode_prompt(context)
                pairs_of[key] = []
            if continuation_ids[i]:
                pairs_of[key].append(i)

        results: list[list[float]] = [[] for _ in continuations]
        keys = list(context_ids)
        for key_chunk in _chunks(keys, self.batch_size):
            # each pair of this chunk -> the row of its context in the chunk
            row_of = {i: row for row, key in enumerate(key_chunk) for i in pairs_of[key]}
            pairs = sorted(row_of)
            if not pairs:
                continue
            cache, first_logprobs, lengths, mask = self._encode_contexts([context_ids[k] for k in key_chunk])
            for pair_chunk in _chunks(pairs, self.pair_batch_size):
                index = torch.tensor([row_of[i] for i in pair_chunk], device=self.device)
                scores = self._score_continuations(
                    cache, first_logprobs, lengths, mask, index, [continuation_ids[i] for i in pair_chunk]
                )
                for i, row in zip(pair_chunk, scores):
                    results[i] = row
        return results

    def _encode_contexts(self, rows: list[list[int]]):
        """Run the contexts once: their cache, the log-probs of the token after each, their lengths."""
        input_ids, mask = self._pad(rows, side="right")  # (C, Lc)
        lengths = mask.sum(dim=1)  # (C,)
        out = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=True)
        last_hidden = out.last_hidden_state[
            torch.arange(len(rows), device=self.device), lengths - 1
        ]  # (C, H)
        first_logprobs = torch.log_softmax(self.model.get_output_embeddings()(last_hidden).float(), dim=-1)
        cache = getattr(out, "cache", None) or out.past_key_values
        return cache, first_logprobs, lengths, mask  # first_logprobs: (C, V)

    def _score_continuations(
        self, cache, first_logprobs, lengths, context_mask, index, rows
    ) -> list[list[float]]:
        """Feed continuation tokens on top of the cached context rows `index` (one per pair)."""
        cont_ids, cont_mask = self._pad(rows, side="right")  # (P, T)
        steps = cont_ids.shape[1]
        positions = lengths[index].unsqueeze(1) + torch.arange(steps, device=self.device)  # (P, T)
        out = self.model(
            input_ids=cont_ids,
            attention_mask=torch.cat([context_mask[index], cont_mask], dim=1),
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: _select_cache(cache, index)},
        )
        # token t of the continuation is predicted by the context's last position (t=0) or by token t-1.
        logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (P, T-1, V)
        first = first_logprobs[index].gather(1, cont_ids[:, :1])  # (P, 1)
        rest = logprobs.gather(2, cont_ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (P, T-1)
        token_logprobs = torch.cat([first, rest], dim=1).cpu().tolist()
        return [lp[: len(r)] for lp, r in zip(token_logprobs, rows)]


def generate_kwargs(tokenizer, options: SamplingOptions, top_p: float = 1.0) -> tuple[dict, int]:
    """transformers `generate` arguments for these options, and the sequences it returns per prompt.

    `options` is anything with n, temperature, max_tokens, stop and greedy (the server's params too).

    Greedy decoding has one answer: it is decoded once and the caller copies it n times (transformers refuses
    `num_return_sequences > 1` without sampling). Sampling uses the full distribution (`top_k=0`), not
    transformers' default top-50, so that samples follow the model's probabilities.
    """
    sequences = 1 if options.greedy else options.n
    sampling = (
        {"do_sample": False}
        if options.greedy
        else {"do_sample": True, "temperature": options.temperature, "top_k": 0, "top_p": top_p}
    )
    return {
        "max_new_tokens": options.max_tokens,
        "num_return_sequences": sequences,
        "pad_token_id": tokenizer.pad_token_id,
        "stop_strings": list(options.stop) or None,
        "tokenizer": tokenizer if options.stop else None,
        **sampling,
    }, sequences


@contextmanager
def seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Sample under `seed` without disturbing the global random state."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class PerPromptSampler(LogitsProcessor):
    """Samples the next token of each prompt's block of rows from that prompt's own generator.

    Used with greedy decoding (which then picks the sampled token, the only one left finite), it draws exactly
    what `torch.manual_seed(seed)` and a one-prompt sampling `generate` would: the same softmax of the
    temperature-scaled logits, the same `multinomial` over the prompt's n rows, the same random stream.
    """

    def __init__(self, prompts: int, rows_per_prompt: int, options: SamplingOptions, device: torch.device):
        self.rows = rows_per_prompt
        self.temperature = options.temperature
        self.generators = [torch.Generator(device).manual_seed(options.seed) for _ in range(prompts)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores / self.temperature, dim=-1)
        picked = torch.cat(
            [
                torch.multinomial(probs[i * self.rows : (i + 1) * self.rows], 1, generator=generator)
                for i, generator in enumerate(self.generators)
            ]
        )
        return torch.full_like(scores, -torch.inf).scatter_(1, picked, 0.0)


def _select_cache(cache, index: torch.Tensor):
    """A new cache holding the given batch rows of `cache` (the original stays usable for other pairs)."""
    from transformers import DynamicCache

    selected = DynamicCache()
    for layer_idx, layer in enumerate(cache.layers):
        selected.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), layer_idx)
    return selected


def _load(path: str, device: torch.device, dtype: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = (
        getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter(path, device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    except OSError as err:
        raise DLNError(
            f"cannot load model {path!r}: it is neither a local model directory nor in the local Hugging "
            f"Face cache, and models are never downloaded at run time; pass hf:<model-dir> or hf:default"
        ) from err
    return tokenizer, model.to(device)


def _load_adapter(path: str, device: torch.device, dtype: str | None):
    """A PEFT LoRA adapter directory (what `dln reason train` / `dln bon train` write): its base model with
    the adapter merged in, so generation and scoring run at the base model's speed."""
    import json

    from peft import PeftModel

    base_name = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
    if not base_name:
        raise DLNError(f"adapter {path} does not name its base model (base_model_name_or_path is empty)")
    tokenizer, base = _load(resolve_model_path(base_name), device, dtype)
    return tokenizer, PeftModel.from_pretrained(base, path).merge_and_unload()


def _adapter_version(path: str) -> str:
    """`#<hash of the adapter weights>` for a PEFT adapter directory, else "": the request cache keys on the
    URI, and an adapter retrained into the same directory must not be served its old answers."""
    import hashlib

    weights = sorted(Path(path).glob("adapter_model.*"))
    if not (Path(path) / "adapter_config.json").is_file() or not weights:
        return ""
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.read_bytes())
    return "#" + digest.hexdigest()[:16]


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
