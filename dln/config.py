"""Typed run configs: a dataclass, a YAML file under `configs/`, and `--key value` command-line overrides.

The one path from a YAML file and a command line to a config: `load_config` (every command), with
`config_epilog` listing the keys in `--help`.

Unknown keys, wrong types and unparsable YAML are `DLNError`s that name the key or the line. The resolved
config is what a run writes to its run directory, so a run can be resumed or repeated exactly.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dln.errors import DLNError

C = TypeVar("C")


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def build_config(cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
    """Instantiate `cls` from a mapping, checking every key and coercing every value to the field's type."""
    known = config_fields(cls)
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise DLNError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}")
    coerced = {key: coerce(value, hints[key], f"{source}: {key}") for key, value in values.items()}
    try:
        return cls(**coerced)
    except (TypeError, ValueError) as err:
        raise DLNError(f"{source}: {err}") from err


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> C:
    """The one way to a run config: the class defaults, then `base` (a preset), the YAML file, then the
    overrides (a mapping, or command-line `--key value` strings, parsed and coerced by type)."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        values.update(read_yaml(path))
    values.update(parse_overrides(overrides) if isinstance(overrides, list) else overrides or {})
    return build_config(cls, values, source=str(path) if path else "command line")


def config_epilog(cls: type, extra: list[str] | None = None) -> str:
    """The `--help` epilog listing every key of a run config with its help text and default."""
    lines = ["config keys (set in the YAML file or as --key value; defaults in brackets):"]
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = repr(default) if len(repr(default)) < 40 else f"(see {cls.__module__})"
        lines.append(f"  --{f.name.replace('_', '-'):<24} {f.metadata.get('help', '')} [{shown}]")
    return "\n".join(lines + (extra or []))


#: config folders renamed to their command's name; an old path gets an error naming the new one.
MOVED_CONFIG_DIRS = {"reasoning": "reason", "vbon": "bon"}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        parts = path.parts
        for i, part in enumerate(parts[:-1]):
            if part in MOVED_CONFIG_DIRS and i > 0 and parts[i - 1] == "configs":
                new = Path(*parts[:i], MOVED_CONFIG_DIRS[part], *parts[i + 1 :])
                raise DLNError(f"config file {path} does not exist: {part}/ configs moved to {new}")
        raise DLNError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise DLNError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DLNError(f"{path}: a config must be a mapping of key: value, got {type(data).__name__}")
    return data


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["--iterations", "5", "--seed=13"]` -> {"iterations": "5", "seed": "13"} (coerced later by type)."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(pairs):
        item = pairs[i]
        if not item.startswith("--"):
            raise DLNError(f"unexpected argument {item!r}: overrides look like --key value or --key=value")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(pairs) or pairs[i + 1].startswith("--"):
                raise DLNError(f"override --{key} needs a value")
            value = pairs[i + 1]
            i += 1
        overrides[key.replace("-", "_")] = value
        i += 1
    return overrides


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert YAML values and command-line strings to the annotated type, or say what was expected."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in typing.get_args(hint):
                return None
        errors = []
        for option in options:
            try:
                return coerce(value, option, where)
            except DLNError as err:
                errors.append(str(err))
        raise DLNError(errors[0] if errors else f"{where}: cannot use {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = (
                yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            )
        if not isinstance(value, list | tuple):
            raise DLNError(f"{where}: expected a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        items = [coerce(v, item_hint, where) for v in value]
        return items if origin is list else tuple(items)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise DLNError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise DLNError(f"{where}: expected a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            raise DLNError(
                f"{where}: expected {'an integer' if hint is int else 'a number'}, got {value!r}"
            ) from None
        if hint is int and isinstance(value, float) and value != number:
            raise DLNError(f"{where}: expected an integer, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, dict | list):
            raise DLNError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return build_config(hint, value, source=where)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise DLNError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
