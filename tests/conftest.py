"""Shared fixtures: one real default model per test session (SmolLM2-135M-Instruct on CPU), no cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def hf_model():
    from dln.lm import load_model

    return load_model("hf:default", cache=False)


@pytest.fixture()
def isolated_home(tmp_path, monkeypatch):
    """A private DLN_HOME whose models/ points at the shared converted default model."""
    from dln.lm.default_model import default_model_dir, ensure_default_model

    source = ensure_default_model()
    monkeypatch.setenv("DLN_HOME", str(tmp_path / "home"))
    target = default_model_dir()
    target.parent.mkdir(parents=True)
    target.symlink_to(source)
    monkeypatch.delenv("DLN_CACHE", raising=False)
    return tmp_path / "home"
