"""What the server serves under which name: the base model and DLN programs (`/v1/models`).

A program is any object with the contract of `dln.load_program(path)`: `predict(inputs: list[str]) ->
list[str]` (the program's answers), `model_uri: str` and `labels: list[str] | None`. Serving a program means
a request whose `model` is the program's name gets `program.predict` applied to its prompt (completions) or
to its last user message (chat), i.e. the program's learned prompts and templates wrapped around the request.
An answer may be a str subclass with an `extra` dict: its entries become extension fields of the answer's
choice (a TFB adapter, `--tfb`, attaches its predictive distribution `label_probs` this way). A program's
optional `kind` and `card` (a dict) fill its `/v1/models` entry.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from dln.errors import DLNError
from serving.errors import NotFoundError
from serving.protocol import ModelCard, ModelList


def served_name_for(uri: str) -> str:
    """`hf:default` -> `default`; otherwise the last part of the URI's path (`vllm:/m/Qwen2` -> `Qwen2`)."""
    rest = uri.partition(":")[2] or uri
    return Path(rest.rstrip("/")).name or rest


@dataclass
class Target:
    """What a request's `model` names: the base model, or a program."""

    name: str
    program: object | None = None


class ModelRegistry:
    """The base model's served name and every program, by name."""

    def __init__(self, base_name: str, base_uri: str) -> None:
        self.base_name, self.base_uri = base_name, base_uri
        self.programs: dict[str, object] = {}

    def add_program(self, name: str, program) -> None:
        """Serve `program` as model `name` (see the module docstring for the contract)."""
        if name == self.base_name or name in self.programs:
            raise DLNError(f"model name {name!r} is already served; give each program its own name")
        missing = [a for a in ("predict", "model_uri") if not hasattr(program, a)]
        if missing:
            raise DLNError(
                f"program {name!r} lacks {', '.join(missing)}: a served program needs "
                f"predict(inputs) -> answers, model_uri and labels"
            )
        self.programs[name] = program

    def resolve(self, name: str) -> Target:
        if name == self.base_name:
            return Target(name)
        if name in self.programs:
            return Target(name, self.programs[name])
        raise NotFoundError(
            f"the model {name!r} does not exist; this server serves: {', '.join(self.names())}", param="model"
        )

    def names(self) -> list[str]:
        return [self.base_name, *self.programs]

    def model_list(self) -> ModelList:
        cards = [ModelCard(id=self.base_name, root=self.base_uri)]
        for name, program in self.programs.items():
            kind = getattr(program, "kind", "dln-program")
            extra = dict(getattr(program, "card", None) or {})
            card = ModelCard(id=name, root=str(program.model_uri), parent=self.base_name, kind=kind, **extra)
            labels = getattr(program, "labels", None)
            if labels:
                card.labels = list(labels)  # type: ignore[attr-defined]
            cards.append(card)
        return ModelList(data=cards)


def same_model(a: str, b: str) -> bool:
    """Whether two local model URIs (hf:/vllm:) name the same weights."""
    from dln.lm.paths import resolve_model_path
    from dln.lm.registry import parse_model_uri

    try:
        (scheme_a, rest_a), (scheme_b, rest_b) = parse_model_uri(a), parse_model_uri(b)
        if "openai" in (scheme_a, scheme_b):
            return a == b
        return resolve_model_path(rest_a) == resolve_model_path(rest_b)
    except DLNError:
        return False


def share_base_model(program, lm, base_uri: str) -> bool:
    """Let a program answer with the server's own model when it was trained on the same one.

    Saves a second copy of the weights, and its calls then run in the model thread with the rest. Returns
    whether the program was bound (programs without `bind`, or on another model, open their own).
    """
    if lm is None or not hasattr(program, "bind") or not same_model(str(program.model_uri), base_uri):
        return False
    program.bind(lm)
    return True


def parse_named(spec: str, option: str) -> tuple[str, str]:
    """`NAME=VALUE` -> (NAME, VALUE), with an error naming the option."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise DLNError(f"{option} takes NAME=VALUE, got {spec!r}")
    return name.strip(), value.strip()


def load_program_spec(spec: str) -> tuple[str, object]:
    """`NAME=path/program.json` -> (NAME, program) through `dln.load_program` (imported only when needed)."""
    name, path = parse_named(spec, "--program")
    if not Path(path).is_file():
        raise DLNError(f"--program {name}: no program file at {path}")
    try:
        module = importlib.import_module("dln.program")
    except ModuleNotFoundError as err:
        if err.name not in ("dln.program", "dln"):
            raise
        raise DLNError(
            "--program needs dln.load_program (the module dln/program.py), which this installation "
            "of dln does not have yet; update dln, or serve the base model only"
        ) from err
    load_program = getattr(module, "load_program", None)
    if load_program is None:
        raise DLNError("--program needs dln.program.load_program, which this version of dln does not define")
    return name, load_program(path)


def load_tfb_spec(spec: str) -> tuple[str, object]:
    """`NAME=DIR` or `NAME=DIR@S` -> (NAME, a `TFBProgram` averaging S weight samples; default 10)."""
    name, value = parse_named(spec, "--tfb")
    directory, samples = value, None
    if "@" in value and not Path(value).is_dir():  # a directory whose name holds "@" is taken whole
        directory, _, count = value.rpartition("@")
        try:
            samples = int(count)
        except ValueError:
            samples = -1
        if samples < 0 or not directory:
            raise DLNError(
                f"--tfb {name}: takes NAME=DIR or NAME=DIR@S with S an integer >= 0 (the weight samples "
                f"averaged per prediction; 0 is the MAP adapter), got {value!r}"
            )
    from reasoning.tfb.program import DEFAULT_SAMPLES, TFBProgram

    try:
        return name, TFBProgram.load(directory, samples=DEFAULT_SAMPLES if samples is None else samples)
    except DLNError as err:
        raise DLNError(f"--tfb {name}: {err}") from err
