"""LoRA adapters on disk and in memory: one LoRA config rule and one atomic save for every trainer here.

An adapter directory is what PEFT writes (`adapter_config.json`, `adapter_model.safetensors`) plus one JSON
file of our own (the trainer's metadata). `hf:<dir>` loads it (base model + adapter merged), and the server
serves it. The base model is recorded by name (`default`, a model directory), never by the local path of
the converted copy, so the directory moves between machines.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from dln.errors import DLNError


def lora_config(
    rank: int, alpha: int, dropout: float, target_modules: str | Sequence[str], task_type: str | None = None
):
    """PEFT's `LoraConfig`: `target_modules` is `all-linear`, a comma-separated string or a list."""
    from peft import LoraConfig

    if isinstance(target_modules, str) and target_modules != "all-linear":
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        bias="none",
        task_type=task_type,
    )


def save_adapter(
    model, out: str | Path, base_model: str, meta_file: str, meta: dict, adapter: str | None = None
) -> Path:
    """Write adapter `adapter` (default: every adapter of `model`) as a PEFT directory, atomically.

    Written to a temporary sibling and renamed over `out`, so a kill never leaves half an adapter.
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [adapter] if adapter else list(model.peft_config)
    local = {name: model.peft_config[name].base_model_name_or_path for name in names}
    for name in names:
        model.peft_config[name].base_model_name_or_path = base_model
    try:
        model.save_pretrained(str(tmp), selected_adapters=names, save_embedding_layers=False)
    finally:
        for name, path in local.items():
            model.peft_config[name].base_model_name_or_path = path
    # PEFT writes a non-default adapter into a sub-directory of its name
    written = tmp / adapter if adapter and (tmp / adapter / "adapter_config.json").is_file() else tmp
    for card in (tmp / "README.md", written / "README.md"):  # PEFT's card names the local base path
        card.unlink(missing_ok=True)
    (written / meta_file).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    old = out.with_name(out.name + ".old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    written.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_adapter_meta(directory: str | Path, meta_file: str, how_to_train: str) -> dict:
    """The trainer's metadata of an adapter directory, or an error saying how to write one."""
    path = Path(directory) / meta_file
    if not path.is_file() or not (Path(directory) / "adapter_config.json").is_file():
        raise DLNError(f"{directory} is not an adapter directory written by {how_to_train} (no {meta_file})")
    return json.loads(path.read_text(encoding="utf-8"))


def load_adapter_weights(model, name: str, directory: str | Path) -> None:
    """Overwrite adapter `name` of a PEFT model with the weights saved in `directory` (an adapter
    directory, or a run directory holding one in `policy/`)."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file() and (directory / "policy").is_dir():
        directory = directory / "policy"
    if not (directory / "adapter_config.json").is_file():
        raise DLNError(
            f"{directory} is not an adapter directory (no adapter_config.json): give a run's policy/ "
            "directory, e.g. runs/sft/policy"
        )
    try:
        set_peft_model_state_dict(model, load_peft_weights(str(directory)), adapter_name=name)
    except RuntimeError as err:  # a size mismatch: another LoRA rank or target modules
        raise DLNError(
            f"the adapter in {directory} does not fit this model's LoRA adapters (same base model, "
            f"lora_rank and target_modules needed): {str(err).splitlines()[0]}"
        ) from None
