"""LLM backends behind one interface, chosen by a model URI (see `load_model`)."""

from dln.lm.base import LanguageModel, Prompt, SamplingOptions
from dln.lm.registry import load_model, parse_model_uri

__all__ = ["LanguageModel", "Prompt", "SamplingOptions", "load_model", "parse_model_uri"]
