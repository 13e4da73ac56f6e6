"""A language layer: a Jinja template F and a trainable prompt π around one LLM call.

`render(x)` builds F(x, π) (a chat message, or a raw string when `chat` is false); `forward` generates the
layer's output, `classify` scores a label set, `log_p` scores given outputs. The prompt is the parameter the
trainers change; passing `prompt=` evaluates a candidate without touching the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from jinja2 import Environment, StrictUndefined, TemplateSyntaxError, UndefinedError

from dln.errors import DLNError
from dln.lm.base import LanguageModel, Prompt

#: Layer 1 of DLN-1 and the output layer of DLN-2: the answer is the assistant's reply.
CLASSIFY_TEMPLATE = "{{ prompt }}\n\n{{ input }}{% if hidden %}\n\nReasoning: {{ hidden }}{% endif %}"
#: The hidden layer of DLN-2: writes intermediate text h for input x.
HIDDEN_TEMPLATE = "{{ prompt }}\n\n{{ input }}"


@lru_cache(maxsize=64)
def compile_template(source: str):
    try:
        return Environment(undefined=StrictUndefined, keep_trailing_newline=True).from_string(source)
    except TemplateSyntaxError as err:
        raise DLNError(
            f"template line {err.lineno}: {err.message}; templates are Jinja, e.g. "
            f"'{{{{ prompt }}}}\\n\\n{{{{ input }}}}'"
        ) from err


@dataclass
class LanguageLayer:
    """F(x, π): `template` renders `prompt`, `input` (and optional extra fields such as `hidden`)."""

    prompt: str
    template: str = CLASSIFY_TEMPLATE
    chat: bool = True

    def render(self, x: str, *, prompt: str | None = None, **fields: object) -> Prompt:
        try:
            text = compile_template(self.template).render(
                prompt=self.prompt if prompt is None else prompt, input=x, **{"hidden": None, **fields}
            )
        except UndefinedError as err:
            raise DLNError(
                f"template uses an unknown field: {err.message}; available: prompt, input, hidden"
            ) from err
        return [{"role": "user", "content": text}] if self.chat else text

    def forward(
        self,
        model: LanguageModel,
        inputs: Sequence[str],
        *,
        prompt: str | None = None,
        hidden: Sequence[str] | None = None,
        **sampling,
    ) -> list[list[str]]:
        """Generate the layer's output(s) for each input."""
        return model.generate(self._render_all(inputs, prompt, hidden), **sampling)

    def write(
        self, model: LanguageModel, inputs: Sequence[str], max_tokens: int, *, prompt: str | None = None
    ) -> list[str]:
        """The layer's greedy output for each input, stripped: DLN-2's hidden text as the program answers."""
        return [o[0].strip() for o in self.forward(model, inputs, prompt=prompt, max_tokens=max_tokens)]

    def classify(
        self,
        model: LanguageModel,
        inputs: Sequence[str],
        labels: Sequence[str],
        *,
        prompt: str | None = None,
        hidden: Sequence[str] | None = None,
    ) -> np.ndarray:
        """log p(label | F(x, π)) normalised over `labels`: (len(inputs), len(labels))."""
        return model.classify(self._render_all(inputs, prompt, hidden), [self.label_text(y) for y in labels])

    def log_p(
        self,
        model: LanguageModel,
        inputs: Sequence[str],
        outputs: Sequence[str],
        *,
        prompt: str | None = None,
        hidden: Sequence[str] | None = None,
    ) -> np.ndarray:
        """log p(output | F(x, π)), summed over the output's tokens: (len(inputs),)."""
        scores = model.score(self._render_all(inputs, prompt, hidden), [self.label_text(y) for y in outputs])
        return np.array([sum(s) for s in scores], dtype=np.float64)

    def log_p_ids(
        self,
        model: LanguageModel,
        inputs: Sequence[str],
        ids: Sequence[Sequence[int]],
        *,
        prompt: str | None = None,
    ) -> np.ndarray:
        """log p(ids | F(x, π)) of exact token ids (a sampled hidden text), summed: (len(inputs),)."""
        scores = model.score_ids(self._render_all(inputs, prompt, None), ids)
        return np.array([sum(s) for s in scores], dtype=np.float64)

    def label_text(self, label: str) -> str:
        """A chat reply starts the assistant turn; a raw completion needs the separating space."""
        return label if self.chat else " " + label

    def _render_all(
        self, inputs: Sequence[str], prompt: str | None, hidden: Sequence[str] | None
    ) -> list[Prompt]:
        hidden = hidden if hidden is not None else [None] * len(inputs)
        return [self.render(x, prompt=prompt, hidden=h) for x, h in zip(inputs, hidden)]
