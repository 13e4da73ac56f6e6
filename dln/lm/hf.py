"""transformers backend: batched generation, and scoring that computes each distinct context once.

Scoring is the hot path of every algorithm here (a prompt against many labels, many hidden states against
one answer). `_score` therefore runs each distinct context once, keeps its key/value cache, and feeds only
the continuation tokens of every (context, continuation) pair on top of the cached rows. Contexts are
right-padded so that no real token ever attends to padding.

Decoding speed on CPU (`benchmarks/bench_decode.py` has the figures): a decode step of the default model is a
few milliseconds of arithmetic, so what decides its time is the thread count (torch's default, one thread per
core, stalls on a CPU shared with other jobs: `threads=1` there) and the weights' dtype (on CPUs with AMX or
AVX-512 bf16, bf16 weights decode a batch of 32 ~2.7x faster, and their matmuls run on weights laid out once
for oneDNN, `dln.lm.packed`). transformers' `generate` adds little over a
hand-written loop, so it stays the decoder. `decode_dtype="bfloat16"` decodes `generate` with a bf16 copy of
the weights: those texts come from a bf16 model (greedy answers can differ from fp32 ones), so the dtype is
part of `uri` and no cache entry of the fp32 decoder is served for them. `sample`, whose log-probs enter
importance weights, always decodes and scores with the model's own weights, so its density stays exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from dln.errors import DLNError
from dln.lm import sampling, tokens
from dln.lm.base import LanguageModel, Prompt, SamplingOptions, ScoredSample, truncate_at_stop
from dln.lm.hardware import warn_if_emulated_bf16
from dln.lm.kv import continue_on_cache, output_cache
from dln.lm.paths import adapter_version, load_tokenizer, resolve_model_path


class HFLanguageModel(tokens.TokenizedPrompts, LanguageModel):
    """A transformers causal LM on CPU (fp32) or GPU (bf16).

    Args:
        name: `default`, a local model directory, or a model already in the local Hugging Face cache.
        device: "cpu", "cuda", ...; default: cuda when available.
        dtype: torch dtype name of the model's weights (every score and sample); default: bfloat16 on GPU,
            float32 on CPU. Another dtype is named in `uri` (`#dtype=`), so cached scores never mix.
        batch_size: prompts per generate call and contexts per scoring forward.
        pair_batch_size: (context, continuation) pairs per continuation forward.
        model: an already loaded model to wrap (trainers pass their policy), with `tokenizer`.
        decode_dtype: dtype of the weights `generate` decodes with (e.g. "bfloat16"); default: the model's.
            `sample` (exact densities) always uses the model's own weights.
        threads: torch CPU threads for this process (`torch.set_num_threads`); default: torch's choice.
    """

    sampler = sampling.SAMPLER

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
        decode_dtype: str | None = None,
        threads: int | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.batch_size = batch_size
        self.pair_batch_size = pair_batch_size
        if model is not None:
            self.model, self.tokenizer, self.uri = model, tokenizer, f"hf:{name}"
        else:
            path = resolve_model_path(name)
            self.uri = f"hf:{path}{adapter_version(path)}"
            self.tokenizer, self.model = load_causal_lm(path, self.device, dtype)
            self._name_own_dtype(dtype)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.eval()
        self.decoder = self._decoder(decode_dtype)

    def _name_own_dtype(self, dtype: str | None) -> None:
        """A model loaded in another dtype than the device's default is another model: its scores get their
        own cache keys (`#dtype=` in `uri`), and a half-precision CPU model its weights packed for oneDNN."""
        default = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if dtype is None or getattr(torch, dtype) == default:
            return
        self.uri += f"#dtype={dtype}"
        if self.device.type == "cpu":
            if dtype == "bfloat16":
                warn_if_emulated_bf16("cpu", "dtype=bfloat16")
            from dln.lm.packed import pack_linears

            pack_linears(self.model)  # inference only: trainers pass their own `model`

    def _decoder(self, dtype: str | None):
        """The model `generate` decodes with: the model itself, or a copy in `dtype` (named in `uri`)."""
        if dtype is None or getattr(torch, dtype) == self.model.dtype:
            return self.model
        import copy

        from dln.lm.packed import pack_linears

        self.uri += f"#decode={dtype}"
        if self.device.type == "cpu" and dtype == "bfloat16":
            warn_if_emulated_bf16("cpu", "decode_dtype=bfloat16")
        decoder = copy.deepcopy(self.model).to(getattr(torch, dtype)).eval()
        pack_linears(decoder)  # bf16 on CPU: weights laid out once for oneDNN, bit-identical outputs
        return decoder

    def pad(self, rows: Sequence[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) on this model's device, padded with its pad token (`dln.lm.sampling.pad`)."""
        return sampling.pad(rows, self.tokenizer.pad_token_id, side, self.device)

    # -- generation ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def _generate(self, prompts: list[Prompt], options: SamplingOptions) -> list[list[str]]:
        if options.max_tokens == 0:
            return [[""] * options.n for _ in prompts]
        rows = self._sample_rows([self.encode_prompt(p) for p in prompts], options, model=self.decoder)
        texts = [
            truncate_at_stop(t, options.stop)
            for t in self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        ]
        return [texts[i * options.n : (i + 1) * options.n] for i in range(len(prompts))]

    def _sample_rows(
        self, encoded: list[list[int]], options: SamplingOptions, top_p: float = 1.0, model=None
    ) -> list[list[int]]:
        """n id rows per prompt, prompt-major, by the one sampling rule (a greedy row copied n times)."""
        rows: list[list[int]] = []
        for chunk in _chunks(encoded, self.batch_size):
            new, per_prompt = sampling.sample_ids(
                model or self.model,
                self.tokenizer,
                chunk,
                n=options.n,
                temperature=options.temperature,
                top_p=top_p,
                max_new_tokens=options.max_tokens,
                seed=options.seed,
                stop=options.stop,
            )
            copies = options.n // per_prompt
            rows += [
                row for i in range(len(chunk)) for row in new[i * per_prompt : (i + 1) * per_prompt] * copies
            ]
        return rows

    # -- scoring -------------------------------------------------------------------------------------
    def _score(self, contexts: list[Prompt], continuations: list[str]) -> list[list[float]]:
        return self._score_ids(contexts, [self.encode_continuation(c) for c in continuations])

    def _sample(
        self, prompts: list[Prompt], options: SamplingOptions, top_p: float
    ) -> list[list[ScoredSample]]:
        """Samples by the one sampling rule, scored on their own ids under the distribution that drew them."""
        rows = self._sample_rows([self.encode_prompt(p) for p in prompts], options, top_p)
        contexts = [p for p in prompts for _ in range(options.n)]
        if options.greedy:
            logprobs = [0.0] * len(rows)  # a point mass
        else:
            tokens_logp = self._score_ids(contexts, rows, options.temperature, top_p)
            logprobs = [float(sum(t)) for t in tokens_logp]
        samples = [
            ScoredSample(self.tokenizer.decode(ids, skip_special_tokens=True), tuple(ids), lp)
            for ids, lp in zip(rows, logprobs)
        ]
        return [samples[i * options.n : (i + 1) * options.n] for i in range(len(prompts))]

    @torch.inference_mode()
    def _score_ids(
        self,
        contexts: list[Prompt],
        continuation_ids: list[list[int]],
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[list[float]]:
        """Token log-probs of id continuations under softmax(top_p_filter(logits / T)) (T = 1: the model)."""
        context_ids: dict[str, list[int]] = {}
        pairs_of: dict[str, list[int]] = {}  # distinct context -> the pairs (with a continuation) that use it
        for i, context in enumerate(contexts):
            key = tokens.context_key(self.tokenizer, context, self.uri)
            if key not in context_ids:
                context_ids[key] = self.encode_prompt(context)
                pairs_of[key] = []
            if continuation_ids[i]:
                pairs_of[key].append(i)

        results: list[list[float]] = [[] for _ in continuation_ids]
        keys = list(context_ids)
        for key_chunk in _chunks(keys, self.batch_size):
            # each pair of this chunk -> the row of its context in the chunk
            row_of = {i: row for row, key in enumerate(key_chunk) for i in pairs_of[key]}
            pairs = sorted(row_of)
            if not pairs:
                continue
            cache, first_logits, lengths, mask = self._encode_contexts([context_ids[k] for k in key_chunk])
            for pair_chunk in _chunks(pairs, self.pair_batch_size):
                index = torch.tensor([row_of[i] for i in pair_chunk], device=self.device)
                scores = self._score_continuations(
                    cache,
                    first_logits,
                    lengths,
                    mask,
                    index,
                    [continuation_ids[i] for i in pair_chunk],
                    (temperature, top_p),
                )
                for i, row in zip(pair_chunk, scores):
                    results[i] = row
        return results

    def _encode_contexts(self, rows: list[list[int]]):
        """Run the contexts once: their cache, the logits of the token after each, their lengths."""
        input_ids, mask = self.pad(rows, side="right")  # (C, Lc)
        lengths = mask.sum(dim=1)  # (C,)
        out = self.model.get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=True)
        last_hidden = out.last_hidden_state[
            torch.arange(len(rows), device=self.device), lengths - 1
        ]  # (C, H)
        first_logits = self.model.get_output_embeddings()(last_hidden).float()
        return output_cache(out), first_logits, lengths, mask  # first_logits: (C, V)

    def _score_continuations(
        self, cache, first_logits, lengths, context_mask, index, rows, density=(1.0, 1.0)
    ) -> list[list[float]]:
        """Feed continuation tokens on top of the cached context rows `index` (one per pair)."""
        cont_ids, cont_mask = self.pad(rows, side="right")  # (P, T)
        decoder = self.model.get_decoder()
        hidden, _ = continue_on_cache(decoder, cache, context_mask, lengths, index, cont_ids, cont_mask)
        # token t of the continuation is predicted by the context's last position (t=0) or by token t-1.
        later = self.model.get_output_embeddings()(hidden[:, :-1]).float()
        logits = torch.cat([first_logits[index].unsqueeze(1), later], dim=1)  # (P, T, V)
        token_logprobs = sampling.token_logprobs(logits, cont_ids, *density).cpu().tolist()  # (P, T)
        return [lp[: len(r)] for lp, r in zip(token_logprobs, rows)]


def load_causal_lm(path: str, device: torch.device | str, dtype: str | None = None):
    """(tokenizer, model) of a resolved model path or PEFT adapter directory, never downloaded.

    The one loader of base models (backend, fine-tuning policy, TFB). dtype default: bfloat16 on GPU,
    float32 on CPU. A tokenizer without a pad token pads with EOS.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    torch_dtype = (
        getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    if (Path(path) / "adapter_config.json").is_file():
        return _load_adapter(path, device, dtype)
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    except OSError as err:
        raise DLNError(
            f"cannot load model {path!r}: it is neither a local model directory nor in the local Hugging "
            f"Face cache, and models are never downloaded at run time; pass hf:<model-dir> or hf:default"
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.to(device)


def _load_adapter(path: str, device: torch.device, dtype: str | None):
    """A PEFT LoRA adapter directory (what `dln reason train` / `dln bon train` write): its base model with
    the adapter merged in, so generation and scoring run at the base model's speed."""
    import json

    from peft import PeftModel

    base_name = json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
    if not base_name:
        raise DLNError(f"adapter {path} does not name its base model (base_model_name_or_path is empty)")
    tokenizer, base = load_causal_lm(resolve_model_path(base_name), device, dtype)
    return tokenizer, PeftModel.from_pretrained(base, path).merge_and_unload()


def _chunks(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
