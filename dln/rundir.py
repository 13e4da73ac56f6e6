"""A run directory: `config.yaml`, `metrics.jsonl`, `checkpoint.json` (after every iteration), `program.json`.

Checkpoints are written atomically; on resume the metrics lines after the checkpoint's iteration are dropped,
so a run killed between logging and checkpointing does not report an iteration twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from dln.atomic import atomic_write_json, atomic_write_text
from dln.errors import DLNError


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_file = self.path / "config.yaml"
        self.metrics_file = self.path / "metrics.jsonl"
        self.checkpoint_file = self.path / "checkpoint.json"
        self.program_file = self.path / "program.json"

    def start(self, config_yaml: str) -> bool:
        """Create the directory or check it belongs to this config; True when resuming."""
        if self.config_file.is_file():
            if self.config_file.read_text(encoding="utf-8") != config_yaml:
                raise DLNError(
                    f"{self.path} holds a run with a different config; resume it with the same options, "
                    f"or choose a new --out directory"
                )
            return self.checkpoint_file.is_file()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DLNError(f"cannot create the run directory {self.path}: {err.strerror}") from err
        atomic_write_text(self.config_file, config_yaml)
        return False

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_file.is_file():
            return None
        state = json.loads(self.checkpoint_file.read_text(encoding="utf-8"))
        self._drop_metrics_after(state["iteration"])
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

    def _drop_metrics_after(self, iteration: int) -> None:
        kept = [r for r in self.metrics() if r.get("iteration", 0) <= iteration]
        atomic_write_text(self.metrics_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
