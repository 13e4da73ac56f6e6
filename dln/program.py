"""A trained prompt program (DLN-1 or DLN-2) that answers inputs, saved as one `program.json`.

The file holds everything needed to answer: the model URI, each layer's template and prompt, the label set.
`load_program(path)` gives a program whose `predict(inputs)` returns answers; `program(x)` answers one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dln.atomic import atomic_write_json
from dln.errors import DLNError
from dln.layers import LanguageLayer
from dln.lm.base import LanguageModel

FORMAT_VERSION = 1


@dataclass
class Program:
    """DLN-1: `output` alone. DLN-2: `hidden` writes h from x, then `output` answers from x and h.

    Attributes:
        labels: the default label set (None: free-text answers, generated greedily).
        hidden_max_tokens: length cap of DLN-2's hidden text at inference.
        model_options: `load_model` options the program was trained with (dtype, decode_dtype): a bf16
            model answers differently from the fp32 one, so a loaded program reopens the one it learned on.
    """

    model_uri: str
    output: LanguageLayer
    labels: list[str] | None = None
    hidden: LanguageLayer | None = None
    hidden_max_tokens: int = 64
    metadata: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    _model: LanguageModel | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        return "dln2" if self.hidden is not None else "dln1"

    def bind(self, model: LanguageModel) -> Program:
        """Answer with an already open model instead of opening `model_uri`."""
        self._model = model
        return self

    @property
    def model(self) -> LanguageModel:
        if self._model is None:
            from dln.lm import load_model

            self._model = load_model(self.model_uri, **self.model_options)
        return self._model

    def hidden_states(self, inputs: Sequence[str]) -> list[str] | None:
        if self.hidden is None:
            return None
        return self.hidden.write(self.model, inputs, self.hidden_max_tokens)

    def predict(
        self, inputs: Sequence[str], labels: Sequence[Sequence[str] | None] | None = None
    ) -> list[str]:
        """Answer every input; `labels` gives per-input label sets (multiple choice), else `self.labels`."""
        inputs = list(inputs)
        hidden = self.hidden_states(inputs)
        label_sets = [tuple(ls) if ls else None for ls in (labels or [None] * len(inputs))]
        label_sets = [ls or (tuple(self.labels) if self.labels else None) for ls in label_sets]
        answers: list[str] = [""] * len(inputs)
        for label_set in dict.fromkeys(label_sets):  # one batched call per distinct label set
            rows = [i for i, ls in enumerate(label_sets) if ls == label_set]
            sub_inputs = [inputs[i] for i in rows]
            sub_hidden = [hidden[i] for i in rows] if hidden is not None else None
            if label_set is None:
                generated = self.output.forward(self.model, sub_inputs, hidden=sub_hidden, max_tokens=32)
                picked = [g[0].strip() for g in generated]
            else:
                logprobs = self.output.classify(self.model, sub_inputs, label_set, hidden=sub_hidden)
                picked = [label_set[j] for j in logprobs.argmax(axis=1)]
            for i, answer in zip(rows, picked):
                answers[i] = answer
        return answers

    def __call__(self, x: str) -> str:
        return self.predict([x])[0]

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": self.model_uri,
            "labels": self.labels,
            "layers": {"hidden": asdict(self.hidden) if self.hidden else None, "output": asdict(self.output)},
            "hidden_max_tokens": self.hidden_max_tokens,
            "model_options": self.model_options,
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "program") -> Program:
        try:
            layers = data["layers"]
            hidden = LanguageLayer(**layers["hidden"]) if layers.get("hidden") else None
            return cls(
                model_uri=data["model"],
                output=LanguageLayer(**layers["output"]),
                labels=data.get("labels"),
                hidden=hidden,
                hidden_max_tokens=int(data.get("hidden_max_tokens", 64)),
                metadata=data.get("metadata", {}),
                model_options=dict(data.get("model_options") or {}),
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise DLNError(
                f"{source} is not a valid program file (problem with {err}); write it with `dln train`"
            ) from err


def load_program(path: str | Path, model: LanguageModel | None = None) -> Program:
    """Open a `program.json` written by `dln train` (or a run directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "program.json"
    if not path.is_file():
        raise DLNError(f"no program at {path}; train one with `dln train --out RUN_DIR`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DLNError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from err
    program = Program.from_dict(data, str(path))
    return program.bind(model) if model is not None else program
