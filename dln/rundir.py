"""The one run directory every trainer writes (`dln train`, `dln reason train`, `dln bon train`,
`dln tfb train-map`): `config.yaml`, `metrics.jsonl`, a checkpoint, and the trainer's outputs.

- `start(config)` creates the directory, or checks that the one there belongs to the same config (keys in
  `ignored`, e.g. `progress`, may differ) and says whether a run is being resumed; a different config is
  refused with one error, whatever the trainer.
- `log` appends one metrics line; `truncate_metrics(after, key)` drops the lines past the checkpoint on
  resume, so a run killed between logging and checkpointing never reports a step twice.
- `save_checkpoint` / `load_checkpoint` keep a JSON state, written atomically (trainers whose state is
  tensors keep it in their own sub-directory, renamed into place, see `reasoning.finetune.loop`).
- `Stopwatch` sums the wall time over every process that trained the run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml

from dln.atomic import atomic_write_json, atomic_write_text
from dln.errors import DLNError


class Stopwatch:
    """Wall time of a run summed over the processes that trained it: a resumed run reports its real cost."""

    def __init__(self, earlier: float = 0.0) -> None:
        self.earlier = earlier
        self.start = time.perf_counter()

    def total(self) -> float:
        return round(self.earlier + time.perf_counter() - self.start, 2)


class RunDir:
    CONFIG = "config.yaml"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_file = self.path / self.CONFIG
        self.metrics_file = self.path / "metrics.jsonl"
        self.checkpoint_file = self.path / "checkpoint.json"
        self.program_file = self.path / "program.json"

    def start(self, config: Any, ignored: tuple[str, ...] = ()) -> bool:
        """Create the directory or check it holds a run of this config; True when a run is there already.

        Args:
            config: a config dataclass (or its YAML text); written as `config.yaml`.
            ignored: keys that may change between a run and its resumption (progress bars, eval sizes).
        """
        values = _as_dict(config)
        if self.config_file.is_file():
            # a key the run's config.yaml lacks (added to the config class since) counts as its default
            old = {**_defaults(config), **self.config()}
            keys = sorted(set(values) | set(old))
            changed = [k for k in keys if k not in ignored and old.get(k) != values.get(k)]
            if changed:
                raise DLNError(
                    f"{self.path} holds a run with a different config ({', '.join(changed)}); resume it with "
                    f"the same options, or choose a new --out directory"
                )
            atomic_write_text(self.config_file, _dump(values))
            return True
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DLNError(f"cannot create the run directory {self.path}: {err.strerror}") from err
        atomic_write_text(self.config_file, _dump(values))
        return False

    def config(self) -> dict[str, Any]:
        """The run's config as written by `start` (a `DLNError` when there is none)."""
        if not self.config_file.is_file():
            raise DLNError(f"{self.path} is not a run directory (no {self.CONFIG}); train one first")
        return yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}

    def load_checkpoint(self, key: str = "iteration") -> dict | None:
        if not self.checkpoint_file.is_file():
            return None
        state = json.loads(self.checkpoint_file.read_text(encoding="utf-8"))
        self.truncate_metrics(state[key], key)
        return state

    def save_checkpoint(self, state: dict) -> None:
        atomic_write_json(self.checkpoint_file, state)

    def log(self, record: dict) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        return [
            json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line
        ]

    def truncate_metrics(self, after: int, key: str = "iteration") -> None:
        """Drop the metric lines whose `key` is past `after` (they will be run again)."""
        if not self.metrics_file.is_file():
            return
        kept = [r for r in self.metrics() if r.get(key, 0) <= after]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


def _as_dict(config: Any) -> dict[str, Any]:
    """The config as YAML reads it back (tuples become lists): a fresh config equals its own file."""
    if isinstance(config, str):
        return yaml.safe_load(config) or {}
    return yaml.safe_load(_dump(dataclasses.asdict(config))) or {}


def _dump(values: dict[str, Any]) -> str:
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def _defaults(config: Any) -> dict[str, Any]:
    """The default value of every field of a config dataclass that has one ({} for YAML text)."""
    if not dataclasses.is_dataclass(config):
        return {}
    values = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
    return yaml.safe_load(_dump(values)) or {}
