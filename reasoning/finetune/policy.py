"""A trainable policy: one transformers base model with named PEFT LoRA adapters.

Variational reasoning needs two distributions on one base (the policy π_θ and the posterior q_φ), vBoN
needs a policy and its frozen reference. Both are named LoRA adapters on one model, so the reference
costs nothing: `policy.use(None)` runs the base with every adapter disabled.

Sequences are handled as token ids end to end: a prompt is encoded once (chat template, `dln.lm.tokens`),
`sample` returns completion ids, and `logprobs` scores exactly those ids, so a sample's log-probability
is never changed by a decode/re-encode round trip. A completion keeps its EOS token when the model stopped,
so log π(y | x) includes the probability of stopping there.

Example:
    policy = Policy.load(PolicyConfig(), adapters=("policy",))
    prompts = policy.encode_prompts(["Continue: The film"])
    samples = policy.sample(prompts, n=4, max_new_tokens=32, seed=0)      # [[ids, ids, ids, ids]]
    with policy.use("policy"):
        logp = policy.logprobs(prompts * 4, samples[0])                 # (4,), with gradient
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from dln.errors import DLNError
from dln.lm import sampling, tokens
from dln.lm.hardware import warn_if_emulated_bf16
from reasoning.finetune import adapters as adapter_io
from reasoning.finetune.adapters import lora_config
from reasoning.finetune.config import PolicyConfig

ADAPTER_META = "dln_adapter.json"


def load_base(model: str = "hf:default", device: str | torch.device = "cpu"):
    """(model, tokenizer) of a base model (`default`, `hf:default`, a model dir), fp32 for training."""
    from dln.lm.hf import load_causal_lm
    from dln.lm.paths import resolve_model_path

    tokenizer, base = load_causal_lm(resolve_model_path(model), device, "float32")
    return base, tokenizer


class Policy:
    """A PEFT model with named adapters, plus sampling and exact sequence log-probs on token ids."""

    def __init__(self, model, tokenizer, config: PolicyConfig, adapters: Sequence[str]) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.adapters = tuple(adapters)
        self.device = next(model.parameters()).device
        self.bf16 = config.bf16_on(self.device)  # resolved once: `auto` becomes true or false here
        if config.bf16 is True and self.device.type == "cpu":
            warn_if_emulated_bf16("cpu", "bf16: true")

    @classmethod
    def load(cls, config: PolicyConfig, adapters: Sequence[str] = ("policy",)) -> Policy:
        """The base model with one fresh LoRA adapter per name (B = 0: each starts equal to the base)."""
        from peft import get_peft_model

        if not adapters or len(set(adapters)) != len(adapters):
            raise DLNError(f"give one or more distinct adapter names, got {list(adapters)}")
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        base, tokenizer = load_base(config.model, device)
        lora = lora_config(
            config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules, "CAUSAL_LM"
        )
        torch.manual_seed(config.seed)
        model = get_peft_model(base, lora, adapter_name=adapters[0])
        for name in adapters[1:]:
            model.add_adapter(name, lora)
        policy = cls(model, tokenizer, config, adapters)
        policy._activate(adapters[0])
        return policy

    def load_adapter_weights(self, name: str, directory: str | Path) -> None:
        """Overwrite adapter `name` with the weights saved in `directory` (e.g. a warm-start SFT adapter)."""
        adapter_io.load_adapter_weights(self.model, name, directory)

    # -- adapters -------------------------------------------------------------------------------------
    def _activate(self, name: str) -> None:
        self.model.set_adapter(name)
        # PEFT freezes every inactive adapter on set_adapter; all stay trainable here, because one loss may
        # be built under several adapters before its backward pass.
        for param_name, param in self.model.named_parameters():
            if "lora_" in param_name:
                param.requires_grad_(True)

    @contextmanager
    def use(self, name: str | None) -> Iterator[None]:
        """Run under adapter `name`; None runs the reference (the base with every adapter disabled)."""
        if name is None:
            with self.model.disable_adapter():
                yield
            return
        if name not in self.adapters:
            raise DLNError(f"unknown adapter {name!r}; this policy has {list(self.adapters)}")
        previous = self.model.active_adapter
        self._activate(name)
        try:
            yield
        finally:
            self._activate(previous)

    def named_adapter_parameters(self, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
        """The trainable parameters of the named adapters, by parameter name."""
        markers = [f".{a}." for a in names]
        params = {
            n: p for n, p in self.model.named_parameters() if "lora_" in n and any(m in n for m in markers)
        }
        if not params:
            raise DLNError(f"adapters {list(names)} have no parameters")
        return params

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The trainable parameters of adapter `name`."""
        return list(self.named_adapter_parameters([name]).values())

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    # -- tokens ---------------------------------------------------------------------------------------
    def encode_prompts(self, texts: Sequence[str], chat: bool = True) -> list[list[int]]:
        """Each text as one user turn of the chat template (ending with the assistant's turn), or raw text
        to be continued (`chat=False`), by the same rule as every backend (`dln.lm.tokens`)."""
        return [
            tokens.encode_prompt(self.tokenizer, [{"role": "user", "content": text}] if chat else text)
            for text in texts
        ]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- sampling -------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompt_ids: Sequence[list[int]],
        n: int = 1,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int = 32,
    ) -> list[list[list[int]]]:
        """n completions per prompt under the active adapter: token ids, EOS kept when the model stopped.

        temperature 0 is greedy (one decode, copied n times). The rule is `dln.lm.sampling`'s: the full
        distribution (top_k=0) with temperature and top_p; with a seed, each prompt's samples come from a
        generator of its own, so they do not depend on the rest of the batch.
        """
        eos = {self.tokenizer.eos_token_id}
        was_training = self.model.training
        self.model.eval()
        out: list[list[list[int]]] = []
        try:
            with self.autocast():
                for start in range(0, len(prompt_ids), batch_size):
                    chunk = list(prompt_ids[start : start + batch_size])
                    rows, per_prompt = sampling.sample_ids(
                        self.model,
                        self.tokenizer,
                        chunk,
                        n=n,
                        temperature=temperature,
                        top_p=top_p,
                        max_new_tokens=max_new_tokens,
                        seed=seed,
                        end_ids=eos,
                    )
                    for i in range(len(chunk)):
                        group = rows[i * per_prompt : (i + 1) * per_prompt]
                        out.append(group * n if per_prompt == 1 else group)
        finally:
            self.model.train(was_training)
        return out

    # -- scoring --------------------------------------------------------------------------------------
    def logprobs(
        self,
        prompt_ids: Sequence[list[int]],
        completion_ids: Sequence[list[int]],
        per_token: bool = False,
        exact: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """log π(completion | prompt) under the active adapter, from one forward pass (with gradient).

        `exact=True` scores in fp32 even when the policy trains under bf16 autocast (evaluation, KL).
        `temperature`/`top_p` score under the distribution `sample` draws from with those options,
        softmax(top_p_filter(logits / T)) (`dln.lm.sampling.token_logprobs`): the density of a sample as
        drawn, which an importance weight needs; the defaults give the model's own density.

        Returns:
            (B,) sums of token log-probs; with per_token, ((B, T) token log-probs, (B, T) float mask).
        """
        if len(prompt_ids) != len(completion_ids):
            raise DLNError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
        rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        ids, mask = sampling.pad(rows, self.tokenizer.pad_token_id, "right", self.device)
        width = max(1, max(len(c) for c in completion_ids))
        # targets: the completion tokens, right-aligned to their own prompt (B, T)
        target = torch.full((len(rows), width), self.tokenizer.pad_token_id, device=self.device)
        positions = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        token_mask = torch.zeros((len(rows), width), device=self.device)
        for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
            if c:
                target[i, : len(c)] = torch.tensor(c, device=self.device)
                positions[i, : len(c)] = torch.arange(len(p) - 1, len(p) - 1 + len(c), device=self.device)
                token_mask[i, : len(c)] = 1.0
        # the LM head runs only from the first completion position on (it is a fifth of the model's FLOPs)
        first = min(len(p) for p in prompt_ids) - 1
        positions = (positions - first).clamp(min=0)  # padding entries (masked) may point anywhere
        with nullcontext() if exact else self.autocast():
            out = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - first)
        logits = out.logits  # (B, L - first, V)
        index = positions.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        picked = logits.gather(1, index)  # (B, T, V): the logits that predict each completion token
        token_logp = sampling.token_logprobs(picked, target, temperature, top_p)  # (B, T)
        token_logp = torch.where(token_mask > 0, token_logp, torch.zeros_like(token_logp))  # padding: 0
        if per_token:
            return token_logp, token_mask
        return token_logp.sum(-1)

    # -- saving ---------------------------------------------------------------------------------------
    def save(self, out: str | Path, name: str, meta: dict | None = None) -> Path:
        """Write adapter `name` as a PEFT directory that `hf:<out>` loads, atomically (`adapters`).

        The base is recorded by name without its `hf:` scheme (`default`, a model dir), as PEFT expects.
        """
        base = self.config.model.removeprefix("hf:")
        meta = {"base_model": base, "adapter": name, **(meta or {})}
        return adapter_io.save_adapter(self.model, out, base, ADAPTER_META, meta, adapter=name)
