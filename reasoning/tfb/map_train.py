"""MAP LoRA fine-tuning for a label task: the adapter TFB Bayesianizes, trained in `finetune.loop.TrainLoop`.

The MAP adapter minimises the label cross-entropy -log p(y | x) (`reasoning.tfb.labels`) over the training
split. The run directory (`dln.rundir.RunDir`) holds `config.yaml`, `metrics.jsonl` and the loop's
checkpoints, so a killed run resumes to the same adapter; the minibatch of step t is drawn from (seed, t)
only: the stream of seeded permutations of the training set, cut into batches. The finished adapter is
written atomically to `OUT/adapter` (`finetune.adapters.save_adapter`): the PEFT files plus `tfb_task.json`
(base model, task, labels, prompt, template), so that `load_adapter(dir)` rebuilds the scorer in one call.

Example:
    python -m dln tfb train-map --task sentiment --out runs/A
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

from reasoning.finetune.adapters import lora_config, read_adapter_meta, save_adapter
from reasoning.tfb.config import MapTrainConfig
from reasoning.tfb.labels import LabelScorer

TASK_FILE = "tfb_task.json"
ADAPTER = "default"  # PEFT's name for the one adapter of a directory loaded with PeftModel.from_pretrained
HOW_TO_TRAIN = "`dln tfb train-map` (train one with: dln tfb train-map --task sentiment --out DIR)"


def add_lora(base, config: MapTrainConfig):
    """`base` with one fresh LoRA adapter (seeded init) of the config's rank, alpha, dropout and modules."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(config.seed)
    lora = lora_config(config.lora_rank, config.lora_alpha, config.lora_dropout, config.target_modules)
    return get_peft_model(base, lora)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Batch `step` of the stream of permutations of range(n) drawn from `random.Random(seed)`."""
    rng, stream = random.Random(seed), []
    while len(stream) < (step + 1) * batch_size:
        stream += rng.sample(range(n), n)
    return stream[step * batch_size : (step + 1) * batch_size]


def train_map(
    config: MapTrainConfig,
    out: str | Path,
    *,
    base=None,
    tokenizer=None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Fine-tune (or resume) a LoRA adapter by label cross-entropy in run directory `out`; the summary.

    Args:
        base, tokenizer: an already loaded base model (default: `config.model` through `load_base`).
        stop_after: end after this many steps of this call (tests use it to simulate a kill).
    """
    from dln.rundir import RunDir, Stopwatch
    from reasoning.finetune.loop import TrainLoop

    out = Path(out)
    RunDir(out).start(config, ignored=("progress",))
    watch = Stopwatch()
    policy, scorer, task, step_fn = _objective(config, base, tokenizer)
    loop = TrainLoop(config, out, policy, [ADAPTER])
    loop.config.progress = progress and config.progress
    loop.run(step_fn, stop_after=stop_after)
    policy.model.eval()
    losses = [r["loss"] for r in RunDir(out).metrics()]
    summary = {
        "out": str(out / "adapter"),
        "task": task.name,
        "steps": loop.step,
        "train_seconds": watch.total(),
        "final_loss": losses[-1] if losses else None,
    }
    if loop.step >= config.steps:
        meta = {
            "base_model": config.model,
            "task": task.name,
            "labels": task.labels,
            "prompt": config.prompt,
            "template": config.template,
            "config": asdict(config),
            **summary,
        }
        save_adapter(policy.model, out / "adapter", config.model, TASK_FILE, meta)
    return summary


def _objective(config: MapTrainConfig, base, tokenizer):
    """(policy, scorer, task, step_fn): step t's loss is the mean -log p(y | x) of batch t."""
    import torch

    from dln.data.loading import example_labels, load_task
    from reasoning.finetune.policy import Policy, load_base

    task = load_task(config.task, train=config.train, dev=config.dev)
    data = task.train
    if config.train_limit:
        data = data.select(range(min(config.train_limit, len(data))))
    if base is None:
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        base, tokenizer = load_base(config.model, device)
    policy = Policy(add_lora(base, config), tokenizer, config, (ADAPTER,))
    scorer = LabelScorer(
        policy.model,
        tokenizer,
        task.labels,
        prompt=config.prompt,
        template=config.template,
        batch_size=config.batch_size,
    )
    encoded = scorer.encode(list(data["input"]))
    mask = scorer.label_mask(example_labels(data, task.labels), len(data))
    targets = torch.tensor([task.labels.index(t) for t in data["target"]])

    def step_fn(step: int):
        batch = batch_indices(len(encoded), config.batch_size, config.seed, step)
        logp = scorer.log_probs([encoded[i] for i in batch], mask[batch])  # (B, K)
        return torch.nn.functional.nll_loss(logp, targets[batch]), {}

    return policy, scorer, task, step_fn


def read_task_file(directory: str | Path) -> dict:
    """The `tfb_task.json` of an adapter directory (or of a train-map run directory's `adapter/`)."""
    return read_adapter_meta(adapter_dir(directory), TASK_FILE, HOW_TO_TRAIN)


def adapter_dir(directory: str | Path) -> Path:
    """A train-map run directory holds its adapter in `adapter/`; an adapter directory is itself."""
    directory = Path(directory)
    return directory / "adapter" if (directory / "adapter" / TASK_FILE).is_file() else directory


def load_adapter(directory: str | Path, *, base=None, tokenizer=None) -> tuple[object, LabelScorer, dict]:
    """(PEFT model in eval mode, its LabelScorer, tfb_task.json) of an adapter directory."""
    from peft import PeftModel

    meta = read_task_file(directory)
    if base is None:
        from reasoning.finetune.policy import load_base

        base, tokenizer = load_base(meta["base_model"])
    model = PeftModel.from_pretrained(base, str(adapter_dir(directory)))
    model.eval()
    scorer = LabelScorer(model, tokenizer, meta["labels"], prompt=meta["prompt"], template=meta["template"])
    return model, scorer, meta
