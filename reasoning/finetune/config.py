"""The configs every fine-tuning run shares: the policy (base model + LoRA) and the optimisation loop.

Kept free of torch so that `dln --help` lists their keys without loading it. An objective's config
inherits both (`class VBoNConfig(LoopConfig, PolicyConfig)`), so every run takes the same keys for them.
Both share `SeedConfig`, so `seed` is declared (and documented) once: one seed drives the adapters'
initialisation, the data order and the sampling of a run.

`model` is a model URI as in `dln train`: `hf:default` (the built-in model), `hf:<model dir>`; a bare
`default` or directory still works (`dln.lm.paths.resolve_model_path`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dln.errors import DLNError


def _help(text: str, default, **kwargs):
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class SeedConfig:
    """The one seed of a run."""

    seed: int = _help("seed of the run: adapter initialisation, data order and sampling", 0)


@dataclass
class PolicyConfig(SeedConfig):
    """The base model and the LoRA adapters put on it."""

    model: str = _help(
        "base model URI: `hf:default` (the built-in SmolLM2-135M-Instruct) or `hf:<model dir>`", "hf:default"
    )
    lora_rank: int = _help("LoRA rank r", 16)
    lora_alpha: int = _help("LoRA alpha (scale alpha / r)", 32)
    lora_dropout: float = _help("dropout on the LoRA input", 0.0)
    target_modules: str = _help("modules LoRA wraps: `all-linear` or a comma-separated list", "all-linear")
    bf16: bool | str = _help(
        "bf16 autocast for sampling, scoring and training: true, false, or auto (where bf16 runs natively: "
        "GPUs and CPUs with avx512_bf16 or AMX, 1.6x faster there; about 10x slower on CPUs without)",
        False,
    )
    device: str = _help("torch device; empty: cuda when available, else cpu", "")

    def __post_init__(self) -> None:
        if self.lora_rank < 1:
            raise DLNError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise DLNError(f"bf16 must be true, false or auto, got {self.bf16!r}")

    def bf16_on(self, device) -> bool:
        """Whether to autocast in bf16 on `device`; `auto`: where bf16 runs natively (`dln.lm.hardware`)."""
        from dln.lm.hardware import native_bf16

        return native_bf16(str(device)) if self.bf16 == "auto" else bool(self.bf16)


@dataclass
class LoopConfig(SeedConfig):
    """Optimisation budget and bookkeeping of one run."""

    steps: int = _help("optimizer updates", 40)
    lr: float = _help("AdamW learning rate of the adapters", 1e-4)
    weight_decay: float = _help("AdamW weight decay", 0.0)
    grad_accum: int = _help("step_fn calls (micro-batches) per update", 1)
    max_grad_norm: float = _help("clip the adapters' gradient norm (0: no clipping)", 1.0)
    save_every: int = _help("checkpoint every N updates (and after the last)", 5)
    progress: bool = _help("show a progress bar", True)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.grad_accum < 1 or self.save_every < 1:
            raise DLNError("steps must be >= 0, grad_accum and save_every >= 1")
