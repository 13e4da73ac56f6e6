"""The arithmetic check of a trace's working (`check_working`): every equation must hold."""

from __future__ import annotations

import pytest

from reasoning.reason.tasks import chain_task, load_task
from reasoning.reason.working import equations, working_is_right


@pytest.mark.parametrize(
    ("text", "right"),
    [
        ("5 * 2 = 10\n10 * 2 = 20\n20 - 6 = 14", True),
        ("13 + 1 = 14\n14 - 2 = 11\n11 - 5 = 7", False),  # a wrong step that still lands on the answer
        ("2 + 3 + 4 = 9", True),  # a chain is one equation, not "3 + 4 = 9"
        ("2 + 3 * 4 = 14", True),  # with the usual precedence
        ("Natalia sold <<48/2=24>>24 clips", True),  # GSM8K's calculator annotation
        ("3 - -2 = 5", True),
        ("1 / 0 = 3", False),
        ("7 / 2 = 3.5", True),
        ("7 / 2 = 3", False),
        ("She has some apples.", None),  # nothing to check
    ],
)
def test_working_is_right(text, right):
    assert working_is_right(text) is right


def test_equations_are_read_whole():
    assert equations("14 - 2 = 12\nthen 12 * 2 = 24") == [("14 - 2", "12"), ("12 * 2", "24")]


def test_every_shipped_gold_trace_passes():
    rows = list(chain_task(seed=0, n_train=300, n_test=0).train) + list(load_task("word_chain").train)
    assert rows and all(working_is_right(r["trace"]) for r in rows)


@pytest.mark.parametrize("objective", ["rft", "grpo"])
def test_check_working_gives_the_on_policy_baselines_the_same_verifier(objective):
    """Through the objective's own step on a fake policy of known densities: with `check_working` a sample
    whose answer is right but whose working is wrong gets reward 0, so RFT trains only on the right one and
    GRPO pushes the wrong one down; without it both count as correct."""
    import torch

    from reasoning.reason.config import ReasonConfig
    from reasoning.reason.objectives import OnPolicy
    from tests.reasoning.reason.fakes import EOS, FakePolicy, FakeTrainer

    rows = [{"question": "Start at 3, add 4.", "answer": "7", "trace": ""}]
    samples = ["3 + 4 = 7\nAnswer: 7", "3 + 3 = 7\nAnswer: 7"]  # both say 7; the second adds wrongly
    for check, rewards in ((False, [1.0, 1.0]), (True, [1.0, 0.0])):
        config = ReasonConfig(objective=objective, k=2, check_working=check)
        policy = FakePolicy(("policy",), script=lambda prompt, n: samples[:n])
        loss, metrics = OnPolicy(FakeTrainer(config, policy, rows))(0)
        assert metrics["accuracy"] == sum(rewards) / 2
        ids = [policy.tokenizer.encode(s) + [EOS] for s in samples]
        lp = torch.tensor([policy.char_logprob("policy", i) for i in ids])
        if objective == "rft":  # -Σ_k (c_k / K) log π(o_k | x)
            expected = -(torch.tensor(rewards) * lp).sum() / 2
        else:  # GRPO: -(1/K) Σ_k A_k log π(o_k | x), A_k = (c_k - mean) / (std + 1e-4); equal c: A = 0
            c = torch.tensor(rewards, dtype=torch.float64)
            expected = -((c - c.mean()) / (c.std(unbiased=False) + 1e-4) * lp).sum() / 2
        assert loss.item() == pytest.approx(expected.item(), abs=1e-5)  # float32 sums of ~50-nat log-probs
