"""oneDNN-packed bf16 linears: bit-identical to `F.linear`, so the bf16 decoder answers greedily as before."""

from __future__ import annotations

import copy

import pytest
import torch

from dln.lm.packed import PackedLinear, pack_linears, packing_available

needs_packing = pytest.mark.skipif(
    not packing_available(), reason="no oneDNN bf16 weight packing on this torch or CPU"
)


@needs_packing
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (2, 7, 64)])
def test_a_packed_linear_gives_the_same_bits_as_the_plain_one(bias, shape):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=bias).to(torch.bfloat16)
    x = torch.randn(*shape, dtype=torch.bfloat16)
    got = PackedLinear(linear)(x)
    assert got.shape == (*shape[:-1], 96)
    assert torch.equal(got, linear(x))


@needs_packing
def test_only_bf16_cpu_linears_are_packed():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    assert pack_linears(model) == 0  # fp32: left as it is
    model = model.to(torch.bfloat16)
    assert pack_linears(model) == 2
    assert all(isinstance(model[i], PackedLinear) for i in (0, 2))


def test_without_packing_a_bf16_model_is_left_as_it_is(monkeypatch):
    """Where the reorder does not run (an AVX2-only CPU), bf16 decoding falls back to plain F.linear."""
    from dln.lm import packed

    monkeypatch.setattr(packed, "packing_available", lambda: False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8)).to(torch.bfloat16)
    assert pack_linears(model) == 0 and type(model[0]) is torch.nn.Linear


@needs_packing
def test_the_packed_bf16_decoder_answers_greedily_as_the_plain_bf16_one(hf_model):
    from dln.lm.sampling import sample_ids

    plain = copy.deepcopy(hf_model.model).to(torch.bfloat16).eval()
    packed = copy.deepcopy(plain)
    assert pack_linears(packed) == sum(isinstance(m, torch.nn.Linear) for m in plain.modules()) > 200
    prompts = [hf_model.encode_prompt(p) for p in ["The capital of France is", "Once upon a time, a"]]
    want, _ = sample_ids(plain, hf_model.tokenizer, prompts, temperature=0.0, max_new_tokens=16)
    got, _ = sample_ids(packed, hf_model.tokenizer, prompts, temperature=0.0, max_new_tokens=16)
    assert got == want
