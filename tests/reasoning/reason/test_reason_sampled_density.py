"""log q of the variational objectives is the density the traces were sampled from (temperature, top_p),
on the default model: `Policy.logprobs` against softmax(top_p_filter(logits / T)) computed here, and the
online step's log q against the same, for traces it drew at T = 0.7, top_p = 0.9."""

from __future__ import annotations

import pytest
import torch

from dln.lm.sampling import sampling_logits
from reasoning.reason.config import ReasonConfig
from reasoning.reason.trainer import ReasonTrainer

pytestmark = pytest.mark.slow


def tempered_logprob(policy, prompt: list[int], completion: list[int], temperature: float, top_p: float):
    """Σ_t log softmax(top_p_filter(logits_t / T))[z_t], one unpadded forward pass of prompt + completion."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()  # (T, V)
    logp = torch.log_softmax(sampling_logits(logits, temperature, top_p), -1)
    return logp.gather(-1, torch.tensor(completion)[:, None]).sum().item()


def test_variational_log_q_is_the_sampled_density(tmp_path):
    config = ReasonConfig(
        objective="forward_kl", n_train=8, n_test=2, batch_size=2, k=2, max_new_tokens=10, temperature=0.7,
        top_p=0.9, eval_size=0, progress=False, posterior_warmup_steps=0,
    )  # fmt: skip
    trainer = ReasonTrainer(config, tmp_path)
    policy, step = trainer.policy, trainer.objective
    rows = trainer.rows(0)
    hints = policy.encode_prompts([f"{r['question']}" for r in rows])
    with policy.use("posterior"):
        got = policy.logprobs(hints, [[28, 29, 30], [31, 32]], temperature=0.7, top_p=0.9)
        for i, completion in enumerate([[28, 29, 30], [31, 32]]):
            want = tempered_logprob(policy, hints[i], completion, 0.7, 0.9)
            assert got[i].item() == pytest.approx(want, abs=2e-3)
    with torch.no_grad():
        scored = step.score(rows, 0)
    from reasoning.reason.tasks import posterior_prompt

    hints = policy.encode_prompts([posterior_prompt(r["question"], r["answer"]) for r in rows])
    traces, _, _ = step.traces(rows, hints, 0)  # the same seed: the same traces
    with policy.use("posterior"):
        for i, z in enumerate(traces):
            want = tempered_logprob(policy, hints[i // 2], z, 0.7, 0.9)
            untempered = tempered_logprob(policy, hints[i // 2], z, 1.0, 1.0)
            assert scored["log_q"].flatten()[i].item() == pytest.approx(want, abs=2e-3)
            assert abs(want - untempered) > 0.05  # the old T = 1 score is a different number
