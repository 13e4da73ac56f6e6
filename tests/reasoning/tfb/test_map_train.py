"""`dln tfb train-map`: a run directory with metrics, a killed run resumes exactly, old keys fail."""

from __future__ import annotations

import pytest
import torch

from dln.config import load_config
from dln.errors import DLNError
from dln.rundir import RunDir
from reasoning.tfb.config import MapTrainConfig
from reasoning.tfb.map_train import read_task_file, train_map


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A 2-layer Llama with the default model's tokenizer, saved as a model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dln.lm.default_model import ensure_default_model

    tok = AutoTokenizer.from_pretrained(str(ensure_default_model()), local_files_only=True)
    tok.pad_token = tok.pad_token or tok.eos_token
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny-base")
    LlamaForCausalLM(config).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def tiny_config(base, **overrides) -> MapTrainConfig:
    values = dict(
        task="sentiment", model=str(base), steps=3, batch_size=4, train_limit=6, save_every=1, progress=False
    )
    return MapTrainConfig(**{**values, **overrides})


def adapter_weights(directory) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter" / "adapter_model.safetensors"))


def test_a_killed_run_resumes_to_the_same_adapter(tiny_base, tmp_path):
    train_map(tiny_config(tiny_base), tmp_path / "straight", progress=False)
    summary = train_map(tiny_config(tiny_base), tmp_path / "killed", progress=False, stop_after=1)
    assert summary["steps"] == 1 and not (tmp_path / "killed" / "adapter").exists()
    train_map(tiny_config(tiny_base), tmp_path / "killed", progress=False)
    want, got = adapter_weights(tmp_path / "straight"), adapter_weights(tmp_path / "killed")
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
    assert any(w.abs().sum() > 0 for n, w in want.items() if "lora_B" in n)  # it did train
    assert [r["step"] for r in RunDir(tmp_path / "killed").metrics()] == [1, 2, 3]
    meta = read_task_file(tmp_path / "killed")  # the run directory finds its adapter/
    assert meta["labels"] == ["good", "bad"] and meta["base_model"] == str(tiny_base)


def test_a_resumed_run_with_another_config_is_refused(tiny_base, tmp_path):
    train_map(tiny_config(tiny_base, steps=1), tmp_path / "run", progress=False)
    with pytest.raises(DLNError, match="different config"):
        train_map(tiny_config(tiny_base, steps=1, lr=0.5), tmp_path / "run", progress=False)


def test_old_lora_keys_fail_naming_the_new_ones(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("task: sentiment\nrank: 8\nalpha: 16\n")
    with pytest.raises(DLNError, match="lora_rank"):
        load_config(MapTrainConfig, str(old), [])
    config = load_config(MapTrainConfig, None, ["--model", "hf:default", "--lora-rank", "4"])
    assert config.model == "hf:default" and config.lora_rank == 4
