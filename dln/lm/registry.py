"""Model URIs -> backends, plus the request cache around them.

| URI | backend |
|---|---|
| `hf:default` | the built-in SmolLM2-135M-Instruct (converted once, see `default_model`) |
| `hf:<path-or-name>` | transformers: a local model or PEFT adapter directory, or a model in the HF cache |
| `vllm:<path-or-name>` | vLLM's offline engine (`pip install dln[vllm]`) |
| `openai:<model>@<base_url>` | any OpenAI-compatible server through the `openai` SDK |
"""

from __future__ import annotations

from pathlib import Path

from dln.errors import DLNError
from dln.home import default_cache_path
from dln.lm.base import LanguageModel
from dln.lm.paths import URI_HELP

SCHEMES = ("hf", "vllm", "openai")


def parse_model_uri(uri: str) -> tuple[str, str]:
    """Split `scheme:rest`, with an error that shows the accepted forms."""
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise DLNError(f"unknown model URI {uri!r}: {URI_HELP}")
    return scheme, rest


def load_model(uri: str, *, cache: bool | str | Path | None = None, **backend_options) -> LanguageModel:
    """Open the model a URI names.

    Args:
        uri: see the module table.
        cache: None uses the default request cache (`$DLN_HOME/cache.sqlite`, `DLN_CACHE` overrides,
            `DLN_CACHE=off` disables); False disables it; a path selects the cache file.
        **backend_options: passed to the backend (e.g. `device`, `batch_size` for `hf:`).
    """
    scheme, rest = parse_model_uri(uri)
    if scheme == "hf":
        from dln.lm.hf import HFLanguageModel

        model: LanguageModel = HFLanguageModel(rest, **backend_options)
    elif scheme == "vllm":
        from dln.lm.vllm import VLLMLanguageModel

        model = VLLMLanguageModel(rest, **backend_options)
    else:
        from dln.lm.openai import OpenAILanguageModel

        model = OpenAILanguageModel.from_uri_rest(rest, **backend_options)
    path = (
        default_cache_path() if cache is None or cache is True else (None if cache is False else Path(cache))
    )
    if path is None:
        return model
    from dln.lm.cache import CachedLanguageModel

    return CachedLanguageModel(model, path)
