"""Model names -> local files: the one place that knows where a model lives (no backend imported here).

`default` is the converted built-in model; an existing path is itself; a name given to `dln prepare --gguf
FILE --name NAME` is that prepared directory; anything else must already sit in the local Hugging Face
cache, because nothing is downloaded at run time. Backends (`hf`, `vllm`), the
fine-tuning policy and the server all resolve names here, so `registry` can import the backends without a
circle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dln.errors import DLNError

URI_HELP = (
    "use hf:default, hf:<name given to dln prepare>, hf:<path>, vllm:<path> or openai:<model>@<base_url>"
)


def resolve_model_path(name: str) -> str:
    """`default` -> the converted built-in model; an existing path -> itself; else a hub name (offline).

    A model URI (`hf:default`, `hf:<path>`) is accepted too, so fine-tuning configs take the same
    `model` values as `dln train`.
    """
    if name.startswith("hf:"):
        name = name[3:]
    if name == "default":
        from dln.lm.default_model import ensure_default_model

        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise DLNError(
                f"{name} is neither a transformers model directory (config.json) nor a PEFT adapter "
                f"directory (adapter_config.json)"
            )
        return str(path)
    if name.startswith((".", "/", "~")):
        raise DLNError(f"model path {name} does not exist; {URI_HELP}")
    from dln.lm.gguf_import import NAME_PATTERN, prepared_model_dir

    if NAME_PATTERN.match(name) and (prepared_model_dir(name) / "config.json").is_file():
        return str(prepared_model_dir(name))
    return name


def load_tokenizer(path: str, scheme: str = "hf"):
    """The tokenizer of a resolved model path, never downloaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except OSError as err:
        raise DLNError(
            f"cannot load model {path!r}: it is neither a local model directory nor in the local Hugging "
            f"Face cache, and models are never downloaded at run time; pass {scheme}:<path-to-model-dir> "
            f"or {scheme}:default"
        ) from err


def local_model_dir(path: str, scheme: str = "vllm") -> str:
    """A hub name already in the local cache -> its snapshot directory, so an engine never goes online."""
    if Path(path).exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, local_files_only=True)
    except Exception as err:  # huggingface_hub's LocalEntryNotFoundError and friends
        raise DLNError(
            f"model {path!r} is not complete in the local Hugging Face cache, and models are never "
            f"downloaded at run time; pass {scheme}:<path-to-model-dir> or {scheme}:default"
        ) from err


def adapter_version(path: str) -> str:
    """`#<hash of the adapter weights>` for a PEFT adapter directory, else "": the request cache keys on the
    URI, and an adapter retrained into the same directory must not be served its old answers."""
    weights = sorted(Path(path).glob("adapter_model.*"))
    if not (Path(path) / "adapter_config.json").is_file() or not weights:
        return ""
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.read_bytes())
    return "#" + digest.hexdigest()[:16]
