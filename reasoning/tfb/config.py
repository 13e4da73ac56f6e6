"""The config of `dln tfb train-map` (the MAP LoRA adapter TFB starts from); torch-free for `dln --help`.

It inherits the project's policy keys (`model`, `lora_rank`, `lora_alpha`, `lora_dropout`, `target_modules`)
and loop keys (`steps`, `lr`, `save_every`, ...), so a TFB adapter is configured like every other fine-tuning
run; only the defaults differ (a small LoRA on q_proj,v_proj with dropout, so MC-dropout has a rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from dln.errors import DLNError
from dln.layers import CLASSIFY_TEMPLATE
from reasoning.finetune.config import LoopConfig, PolicyConfig, _help

DEFAULT_PROMPT = "Answer with one of the options only."


@dataclass
class MapTrainConfig(LoopConfig, PolicyConfig):
    """`dln tfb train-map`: a YAML file under configs/tfb/ plus --key value overrides."""

    task: str | None = _help("shipped task name (dln/data/tasks)", None)
    train: str | None = _help("training JSONL/CSV (instead of or on top of --task)", None)
    dev: str | None = _help("dev JSONL/CSV", None)
    prompt: str = _help("instruction rendered before the input", DEFAULT_PROMPT)
    template: str = _help("Jinja template (fields: prompt, input)", CLASSIFY_TEMPLATE)
    lora_rank: int = _help("LoRA rank r", 8)
    lora_alpha: int = _help("LoRA alpha (scaling alpha / r)", 16)
    lora_dropout: float = _help("LoRA dropout (also the MC-dropout rate)", 0.1)
    target_modules: str = _help("modules that get a LoRA pair: `all-linear` or a comma list", "q_proj,v_proj")
    steps: int = _help("optimiser steps", 60)
    batch_size: int = _help("examples per step", 8)
    lr: float = _help("AdamW learning rate", 1e-3)
    weight_decay: float = _help("AdamW weight decay", 0.01)
    max_grad_norm: float = _help("clip the adapter's gradient norm (0: no clipping)", 0.0)
    save_every: int = _help("checkpoint every N steps (and after the last)", 10)
    train_limit: int = _help("use the first N training examples (0: all)", 0)
    seed: int = _help("seed of the LoRA init and of the minibatch order", 0)

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)
        PolicyConfig.__post_init__(self)
        if self.steps < 1 or self.batch_size < 1:
            raise DLNError("lora_rank, steps and batch_size must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise DLNError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
