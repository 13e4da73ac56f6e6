"""MAP LoRA fine-tuning for a label task, and the label scoring every TFB step shares.

The answer is a label scored like `LanguageModel.classify`: the chat-rendered prompt F(x, π) (the
`CLASSIFY_TEMPLATE` of `dln.layers`) is followed by the label's tokens, and

    log p(y | x) = log p_θ(y | F(x, π)) - log Σ_{y' ∈ Y(x)} p_θ(y' | F(x, π))

is normalised over the example's label set Y(x). The MAP adapter minimises the cross-entropy -log p(y | x)
over the training split with PEFT LoRA (a short plain torch loop). An adapter directory holds the PEFT files
(`save_pretrained`) plus `tfb_task.json` (base model, task, labels, prompt, template), so that
`load_adapter(dir)` rebuilds the scorer in one call.

Example:
    python -m dln tfb train-map --task sentiment --out runs/A
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dln.errors import DLNError
from dln.layers import CLASSIFY_TEMPLATE, LanguageLayer
from dln.lm import tokens

if TYPE_CHECKING:
    import torch

TASK_FILE = "tfb_task.json"
DEFAULT_PROMPT = "Answer with one of the options only."


def _help(text: str, default, **kwargs):
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class MapTrainConfig:
    """`dln tfb train-map`: a YAML file under configs/tfb/ plus --key value overrides."""

    task: str | None = _help("shipped task name (dln/data/tasks)", None)
    train: str | None = _help("training JSONL/CSV (instead of or on top of --task)", None)
    dev: str | None = _help("dev JSONL/CSV", None)
    model: str = _help("base model: default, or a transformers directory", "default")
    prompt: str = _help("instruction rendered before the input", DEFAULT_PROMPT)
    template: str = _help("Jinja template (fields: prompt, input)", CLASSIFY_TEMPLATE)
    rank: int = _help("LoRA rank r", 8)
    alpha: float = _help("LoRA alpha (scaling alpha / r)", 16.0)
    dropout: float = _help("LoRA dropout (also the MC-dropout rate)", 0.1)
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "modules that get a LoRA pair"}
    )
    steps: int = _help("optimiser steps", 60)
    batch_size: int = _help("examples per step", 8)
    lr: float = _help("AdamW learning rate", 1e-3)
    train_limit: int = _help("use the first N training examples (0: all)", 0)
    seed: int = _help("seed of the LoRA init and of the minibatch order", 0)

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 1 or self.batch_size < 1:
            raise ValueError("rank, steps and batch_size must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class LabelScorer:
    """log p(label | F(x, π)) normalised over the label set, for a (PEFT) causal LM, with or without grad.

    Prompts are encoded with `dln.lm.tokens` (the rule of the `hf:` backend). Single-token label sets take
    one forward per example (left padding with explicit position ids, logits of the last position only);
    otherwise each (example, label) sequence is run and its label tokens summed.
    """

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        *,
        prompt: str = DEFAULT_PROMPT,
        template: str = CLASSIFY_TEMPLATE,
        batch_size: int = 16,
    ) -> None:
        if not labels:
            raise DLNError("a label task needs at least one label")
        self.model, self.tokenizer, self.labels = model, tokenizer, list(labels)
        self.layer = LanguageLayer(prompt, template)
        self.batch_size = batch_size
        self.label_ids = [
            tokens.encode_continuation(tokenizer, self.layer.label_text(y)) for y in self.labels
        ]
        if any(not ids for ids in self.label_ids):
            raise DLNError(f"a label encodes to no tokens: {self.labels}")
        self.single_token = all(len(ids) == 1 for ids in self.label_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def encode(self, inputs: list[str]) -> list[list[int]]:
        return [tokens.encode_prompt(self.tokenizer, self.layer.render(x)) for x in inputs]

    def label_mask(self, row_labels: list[list[str]] | None, n: int) -> torch.Tensor:
        """(N, K) bool: which of the task's labels each example offers (all when rows carry none)."""
        import torch

        if row_labels is None:
            return torch.ones(n, len(self.labels), dtype=torch.bool)
        index = {y: k for k, y in enumerate(self.labels)}
        mask = torch.zeros(n, len(self.labels), dtype=torch.bool)
        for i, row in enumerate(row_labels):
            for y in row or self.labels:
                if y not in index:
                    raise DLNError(f"label {y!r} is not in the adapter's label set {self.labels}")
                mask[i, index[y]] = True
        return mask

    def log_probs(self, encoded: list[list[int]], mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, K) log-probs normalised over each row's allowed labels; differentiable under grad mode."""
        import torch

        out = []
        for start in range(0, len(encoded), self.batch_size):
            rows = encoded[start : start + self.batch_size]
            out.append(self._batch_totals(rows) if self.single_token else self._batch_totals_multi(rows))
        totals = torch.cat(out)  # (N, K) unnormalised sequence log-probs
        if mask is not None:
            totals = totals.masked_fill(~mask, float("-inf"))
        return totals - torch.logsumexp(totals, dim=1, keepdim=True)

    def _forward(self, rows: list[list[int]], keep_last: bool) -> torch.Tensor:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: the last column is every row's last real token
            ids[i, width - len(r) :] = torch.tensor(r)
            attn[i, width - len(r) :] = 1
        positions = (attn.cumsum(-1) - 1).clamp(min=0)  # the positions the rows have unpadded
        device = next(self.model.parameters()).device
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            position_ids=positions.to(device),
            logits_to_keep=1 if keep_last else 0,
        )
        return out.logits.float()  # (B, 1 or T, V)

    def _batch_totals(self, rows: list[list[int]]) -> torch.Tensor:
        import torch

        logits = self._forward(rows, keep_last=True)[:, -1]  # (B, V)
        label_ids = torch.tensor([ids[0] for ids in self.label_ids], device=logits.device)
        return torch.log_softmax(logits, dim=-1)[:, label_ids].cpu()  # (B, K)

    def _batch_totals_multi(self, rows: list[list[int]]) -> torch.Tensor:
        import torch

        seqs = [r + lab for r in rows for lab in self.label_ids]
        logp = torch.log_softmax(self._forward(seqs, keep_last=False), dim=-1)  # (B*K, T, V)
        width = logp.shape[1]
        totals = []
        for j, lab in enumerate(lab for _ in rows for lab in self.label_ids):
            # left padded: label token t sits at column width - len(lab) + t, predicted by the column before
            cols = torch.arange(width - len(lab), width, device=logp.device)
            totals.append(logp[j, cols - 1, torch.tensor(lab, device=logp.device)].sum())
        return torch.stack(totals).reshape(len(rows), len(self.label_ids)).cpu()


def add_lora(base, config: MapTrainConfig):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        bias="none",
    )
    return get_peft_model(base, lora)


def train_map(
    config: MapTrainConfig, out: str | Path, *, base=None, tokenizer=None, progress: bool = True
) -> dict:
    """Fine-tune a LoRA adapter by label cross-entropy and save it to `out`; returns the training log."""
    import torch

    from dln.data.loading import example_labels, load_task

    task = load_task(config.task, train=config.train, dev=config.dev)
    data = (
        task.train
        if not config.train_limit
        else task.train.select(range(min(config.train_limit, len(task.train))))
    )
    if base is None:
        from reasoning.finetune.policy import load_base

        base, tokenizer = load_base(config.model)
    model = add_lora(base, config)
    scorer = LabelScorer(
        model,
        tokenizer,
        task.labels,
        prompt=config.prompt,
        template=config.template,
        batch_size=config.batch_size,
    )
    encoded = scorer.encode(list(data["input"]))
    mask = scorer.label_mask(example_labels(data, task.labels), len(data))
    targets = torch.tensor([task.labels.index(t) for t in data["target"]])
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    rng = random.Random(config.seed)
    order: list[int] = []
    model.train()
    log, start = [], time.time()
    bar = _progress(config.steps, progress)
    for step in range(config.steps):
        if len(order) < config.batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        batch, order = order[: config.batch_size], order[config.batch_size :]
        logp = scorer.log_probs([encoded[i] for i in batch], mask[batch])  # (B, K)
        loss = torch.nn.functional.nll_loss(logp, targets[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        log.append({"step": step + 1, "loss": loss.item()})
        if bar is not None:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    meta = {
        "base_model": config.model,
        "task": task.name,
        "labels": task.labels,
        "prompt": config.prompt,
        "template": config.template,
        "config": asdict(config),
        "train_seconds": time.time() - start,
        "final_loss": log[-1]["loss"],
    }
    save_adapter(model, out, meta)
    return {"out": str(out), **{k: meta[k] for k in ("task", "train_seconds", "final_loss")}}


def save_adapter(model, out: str | Path, meta: dict) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for peft_config in model.peft_config.values():
        peft_config.base_model_name_or_path = meta["base_model"]  # a model name, never a local path
    card = out / "README.md"
    had_card = card.exists()
    model.save_pretrained(str(out), save_embedding_layers=False)
    if not had_card:  # PEFT's model card names the base model by its local path: not ours to keep
        card.unlink(missing_ok=True)
    (out / TASK_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_task_file(directory: str | Path) -> dict:
    path = Path(directory) / TASK_FILE
    if not path.is_file():
        raise DLNError(
            f"{directory} is not an adapter written by `dln tfb train-map` (no {TASK_FILE}); "
            f"train one with: dln tfb train-map --task sentiment --out {directory}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_adapter(directory: str | Path, *, base=None, tokenizer=None) -> tuple[object, LabelScorer, dict]:
    """(PEFT model in eval mode, its LabelScorer, tfb_task.json) of an adapter directory."""
    from peft import PeftModel

    meta = read_task_file(directory)
    if not (Path(directory) / "adapter_config.json").is_file():
        raise DLNError(f"{directory} has no adapter_config.json; it is not a PEFT adapter directory")
    if base is None:
        from reasoning.finetune.policy import load_base

        base, tokenizer = load_base(meta["base_model"])
    model = PeftModel.from_pretrained(base, str(directory))
    model.eval()
    scorer = LabelScorer(model, tokenizer, meta["labels"], prompt=meta["prompt"], template=meta["template"])
    return model, scorer, meta


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="map lora", unit="step")
