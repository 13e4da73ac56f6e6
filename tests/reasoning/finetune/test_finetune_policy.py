"""The shared Policy: exact sequence log-probs on token ids, seeded sampling, named adapters, saving."""

from __future__ import annotations

import pytest
import torch

from reasoning.finetune.policy import Policy, PolicyConfig


@pytest.fixture(scope="module")
def policy():
    return Policy.load(PolicyConfig(), adapters=("policy", "posterior"))


def test_logprobs_equal_the_hf_backend_score_for_ragged_batches(policy, hf_model):
    texts = ["The film", "A much longer opening of a review about a film that", "Hi"]
    prompts = policy.encode_prompts(texts, chat=False)
    completions = [
        policy.tokenizer(t, add_special_tokens=False).input_ids for t in (" was good", " it", " there friend")
    ]
    with torch.no_grad(), policy.use(None):
        got = policy.logprobs(prompts, completions, exact=True)
        per_token, mask = policy.logprobs(prompts, completions, per_token=True, exact=True)
    want = [sum(s) for s in hf_model.score(texts, [" was good", " it", " there friend"])]
    assert got.tolist() == pytest.approx(want, abs=1e-3)
    torch.testing.assert_close(per_token.sum(-1), got)
    assert mask.sum(-1).tolist() == [len(c) for c in completions]


def test_seeded_sampling_repeats_and_a_fresh_adapter_is_the_base(policy):
    prompts = policy.encode_prompts(["Say something."])
    first = policy.sample(prompts, n=2, max_new_tokens=6, seed=5)
    assert first == policy.sample(prompts, n=2, max_new_tokens=6, seed=5)
    completion = first[0][0]
    with torch.no_grad():
        with policy.use("policy"):
            adapted = policy.logprobs(prompts, [completion], exact=True)
        with policy.use(None):
            base = policy.logprobs(prompts, [completion], exact=True)
    torch.testing.assert_close(adapted, base)  # LoRA starts with B = 0
    assert set(policy.parameters("policy")).isdisjoint(policy.parameters("posterior"))


def test_save_writes_a_peft_adapter_that_names_its_base_by_model_name(policy, tmp_path):
    import json

    out = policy.save(tmp_path / "adapter", "posterior", {"note": "test"})
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "default"
    assert json.loads((out / "dln_adapter.json").read_text())["note"] == "test"
    assert not (tmp_path / "adapter.tmp").exists()


@pytest.mark.parametrize(("flags", "native"), [(("avx2",), False), (("avx512_bf16",), True)])
def test_bf16_auto_autocasts_only_where_bf16_is_native(policy, monkeypatch, flags, native):
    from dln.lm import hardware

    monkeypatch.setattr(hardware, "cpu", lambda: ("test cpu", flags))
    auto = Policy(policy.model, policy.tokenizer, PolicyConfig(bf16="auto"), policy.adapters)
    assert auto.bf16 is native
    with auto.autocast():
        assert torch.is_autocast_enabled("cpu") is native
    assert Policy(policy.model, policy.tokenizer, PolicyConfig(bf16=False), policy.adapters).bf16 is False


def test_bf16_takes_true_false_or_auto_from_a_config():
    from dln.config import build_config
    from dln.errors import DLNError

    assert build_config(PolicyConfig, {"bf16": "auto"}).bf16 == "auto"
    assert build_config(PolicyConfig, {"bf16": "yes"}).bf16 is True
    assert build_config(PolicyConfig, {"bf16": False}).bf16 is False
    with pytest.raises(DLNError, match="true, false or auto"):
        build_config(PolicyConfig, {"bf16": "fast"})
