"""Variational inference over LLM latent text: prompts and thinking traces as latent variables."""

from dln.errors import DLNError
from dln.lm import LanguageModel, load_model
from dln.program import Program, load_program

__version__ = "0.1.0"

__all__ = ["DLNError", "LanguageModel", "Program", "load_model", "load_program", "__version__"]
