"""The shipped configs under configs/reason/ load, and the shared keys are declared once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dln.config import load_config
from reasoning.finetune.config import LoopConfig, PolicyConfig, SeedConfig
from reasoning.reason.config import OBJECTIVES, ReasonConfig

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "reason"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_with_a_model_uri(path):
    config = load_config(ReasonConfig, path, ["--steps", "2"])
    assert config.objective == path.stem and config.steps == 2
    assert config.model == "hf:default"


def test_one_config_per_objective():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(OBJECTIVES)


def test_seed_is_declared_once_and_model_defaults_to_a_uri():
    classes = (PolicyConfig, LoopConfig, ReasonConfig)
    helps = {f.metadata["help"] for cls in classes for f in dataclasses.fields(cls) if f.name == "seed"}
    assert helps == {dataclasses.fields(SeedConfig)[0].metadata["help"]}
    assert "seed" not in ReasonConfig.__dict__["__annotations__"]
    assert PolicyConfig().model == "hf:default"


def test_bare_default_still_names_the_built_in_model():
    from dln.lm.paths import resolve_model_path

    assert resolve_model_path("default") == resolve_model_path("hf:default")
    assert load_config(ReasonConfig, None, {"model": "default"}).model == "default"
