"""The recipe's weights ρ (GML, Acc, exact likelihood; exact and normalised ratio), the final data (mix,
weighted), and the online variational step's θ and φ losses, against hand-computed values on a fake
policy of known densities (`fakes.FakePolicy`), through the code the trainers run."""

from __future__ import annotations

import math

import pytest
import torch

from dln.errors import DLNError
from reasoning.reason.completions import CompletionIds
from reasoning.reason.config import ReasonConfig
from reasoning.reason.rho import final_rows, log_rho, score_traces
from reasoning.reason.tasks import answer_suffix
from tests.reasoning.reason.fakes import EOS, FakePolicy, FakeTrainer

ROWS = [
    {"question": "Start at 3, add 4.", "answer": "7", "trace": "3 + 4 = 7"},  # gold
    {"question": "Start at 9, subtract 4.", "answer": "5", "trace": ""},  # answer only
]
TRACES = [["3 + 4 = 7", "2 + 5 = 7"], ["9 - 4 = 5", "1 + 4 = 5"]]
CORRECT_OF_3 = {"3 + 4 = 7": 2, "2 + 5 = 7": 0, "9 - 4 = 5": 3, "1 + 4 = 5": 1}  # acc = n / 3


def continuations(prompt: str, n: int) -> list[str]:
    """π_θ0's scripted continuations after (x, z): CORRECT_OF_3[z] of every 3 are correct."""
    trace = next(z for z in CORRECT_OF_3 if prompt.endswith(z))
    answer = trace.split("= ")[-1]
    return [f"\nAnswer: {answer if m < CORRECT_OF_3[trace] else 0}" for m in range(n)]


def recipe_config(**kw) -> ReasonConfig:
    return ReasonConfig(objective="variational_sft", temperature=0.5, acc_samples=3, **kw)


@pytest.fixture
def scored():
    policy = FakePolicy(("prior", "posterior"), script=continuations)
    ids = CompletionIds(policy.tokenizer)
    traces = [[policy.tokenizer.encode(z) for z in group] for group in TRACES]
    return policy, score_traces(policy, ids, ROWS, traces, recipe_config(), seed=0)


def by_hand(policy: FakePolicy, row: dict, z: str) -> dict:
    y_ids = policy.tokenizer.encode(answer_suffix(z, row["answer"])) + [EOS]
    return {
        "log_prior_z": policy.char_logprob("prior", z),
        "log_q_z": policy.char_logprob("posterior", z, temperature=0.5),  # q at the sampled temperature
        "z_len": len(z),
        "log_y": policy.char_logprob("prior", y_ids),
        "y_len": len(y_ids),
        "acc": CORRECT_OF_3[z] / 3,
        "skipped": False,
    }


def test_terms_of_rho_match_hand_computation(scored):
    policy, terms = scored
    for row, group, group_terms in zip(ROWS, TRACES, terms):
        for z, term in zip(group, group_terms):
            assert term == pytest.approx(by_hand(policy, row, z), abs=1e-9)
    assert all(call["adapter"] == "prior" and call["n"] == 3 for call in policy.sample_calls)


@pytest.mark.parametrize("estimator", ["gml", "acc", "likelihood"])
@pytest.mark.parametrize("ratio", ["exact", "normalized"])
def test_log_rho_of_every_estimator_and_ratio(scored, estimator, ratio):
    policy, terms = scored
    for row, group, group_terms in zip(ROWS, TRACES, terms):
        for z, term in zip(group, group_terms):
            h = by_hand(policy, row, z)
            log_r = h["log_prior_z"] - h["log_q_z"]
            log_r = log_r / len(z) if ratio == "normalized" else log_r
            log_y = {
                "likelihood": h["log_y"],
                "gml": h["log_y"] / h["y_len"],
                "acc": math.log(h["acc"]) if h["acc"] else -math.inf,
            }[estimator]
            assert log_rho(term, estimator, ratio) == pytest.approx(log_y + log_r, abs=1e-9)


def test_final_data_mix_weighted_and_paired(scored):
    policy, terms = scored
    rho = [[math.exp(log_rho(t, "acc", "exact")) for t in group] for group in terms]
    assert rho[0][1] == 0.0  # no correct continuation: never chosen
    mix, stats = final_rows(ROWS, TRACES, terms, recipe_config(rho_estimator="acc", rho_ratio="exact"))
    best = [group[max(range(2), key=lambda k: r[k])] for group, r in zip(TRACES, rho)]
    assert [(r["question"], r["trace"]) for r in mix] == [
        (ROWS[0]["question"], ROWS[0]["trace"]),  # the gold trace
        (ROWS[0]["question"], best[0]),
        (ROWS[1]["question"], best[1]),
    ]
    assert stats["gold_rows"] == 1 and stats["with_trace"] == 2
    weighted, stats = final_rows(
        ROWS, TRACES, terms, recipe_config(rho_estimator="acc", rho_ratio="exact", final_data="weighted")
    )
    for row, r in zip(weighted[1:], rho):
        assert row["weights"] == pytest.approx([x / sum(r) for x in r], abs=1e-12)
    w = [x / sum(rho[1]) for x in rho[1]]
    assert stats["ess"] == pytest.approx((1.0 + 1.0 / sum(v * v for v in w)) / 2)  # question 0: ESS 1
    paired, _ = final_rows(
        ROWS, TRACES, terms, recipe_config(rho_estimator="acc", rho_ratio="exact", final_data="paired")
    )
    # one row per question, in the questions' order: the gold question holds its gold and its top-ρ trace
    # (the same rows SFT draws from, so the same questions at the same seed), the answer-only one its top-ρ
    assert [(r["question"], r.get("traces", [r["trace"]]), r.get("weights")) for r in paired] == [
        (ROWS[0]["question"], [ROWS[0]["trace"], best[0]], [1.0, 1.0]),
        (ROWS[1]["question"], [best[1]], None),
    ]
    hopeless = [[{**t, "acc": 0.0} for t in terms[0]], terms[1]]  # no trace of question 0 reaches its answer
    paired, stats = final_rows(
        ROWS, TRACES, hopeless, recipe_config(rho_estimator="acc", rho_ratio="exact", final_data="paired")
    )
    assert paired[0] == ROWS[0] and stats["with_trace"] == 1  # its gold trace alone, never dropped
    slipped = [["3 + 4 = 8", TRACES[0][1]], TRACES[1]]  # the top-ρ trace of question 0 ends at 8, not 7
    _, stats = final_rows(ROWS, slipped, terms, recipe_config(rho_estimator="acc", rho_ratio="exact"))
    assert stats["chosen_reaches_answer"] == 0.5


def test_check_working_never_chooses_a_trace_with_a_wrong_equation(scored):
    _, terms = scored
    config = dict(rho_estimator="gml", rho_ratio="exact")
    rho = [[log_rho(t, "gml", "exact") for t in group] for group in terms]
    best = [max(range(2), key=lambda k: r[k]) for r in rho]
    wrong = "9 - 4 = 6\n6 - 1 = 5"  # lands on the answer 5 through a wrong step
    texts = [list(TRACES[0]), list(TRACES[1])]
    texts[1][best[1]] = wrong
    plain, stats = final_rows(ROWS, texts, terms, recipe_config(**config))
    assert plain[-1]["trace"] == wrong and stats["wrong_working"] == 0  # ρ alone prefers it
    checked, stats = final_rows(ROWS, texts, terms, recipe_config(**config, check_working=True))
    assert checked[-1]["trace"] == TRACES[1][1 - best[1]] and stats["wrong_working"] == 1
    both_wrong = [["3 + 4 = 8\n8 - 1 = 7", "2 + 5 = 6\n6 + 1 = 7"], texts[1]]
    checked, stats = final_rows(ROWS, both_wrong, terms, recipe_config(**config, check_working=True))
    # question 0 keeps its gold trace and gets no q-trace
    assert [r["trace"] for r in checked] == [ROWS[0]["trace"], TRACES[1][1 - best[1]]]
    assert stats["with_trace"] == 1 and stats["wrong_working"] == 3


def test_check_working_draws_no_acc_continuations_for_a_trace_with_wrong_working(scored):
    _, terms = scored
    policy = FakePolicy(("prior", "posterior"), script=continuations)
    wrong = [["3 + 4 = 7", "2 + 4 = 7"], ["9 - 4 = 5", "1 + 3 = 5"]]  # second: a wrong step to y
    CORRECT_OF_3.update({"2 + 4 = 7": 3, "1 + 3 = 5": 3})  # acc would choose them if they were scored
    try:
        traces = [[policy.tokenizer.encode(z) for z in group] for group in wrong]
        config = recipe_config(rho_estimator="acc", check_working=True)
        checked = score_traces(policy, CompletionIds(policy.tokenizer), ROWS, traces, config, seed=0)
        full = score_traces(policy, CompletionIds(policy.tokenizer), ROWS, traces, recipe_config(), seed=0)
    finally:
        for z in ("2 + 4 = 7", "1 + 3 = 5"):
            CORRECT_OF_3.pop(z)
    assert [c["prompts"] for c in policy.sample_calls] == [2, 4]  # checked: only the 2 right traces
    assert [[t["skipped"] for t in g] for g in checked] == [[False, True], [False, True]]
    assert [[t["acc"] for t in g] for g in checked] == [[2 / 3, None], [1.0, None]]
    for group_checked, group_full in zip(checked, full):  # every other term is the same as unchecked
        for a, b in zip(group_checked, group_full):
            assert {k: v for k, v in a.items() if k not in ("acc", "skipped")} == pytest.approx(
                {k: v for k, v in b.items() if k not in ("acc", "skipped")}, abs=1e-12
            )
    data, stats = final_rows(ROWS, wrong, checked, config)
    assert [r["trace"] for r in data] == ["3 + 4 = 7", "3 + 4 = 7", "9 - 4 = 5"]
    assert stats["wrong_working"] == 2
    unchecked, _ = final_rows(ROWS, wrong, full, recipe_config(rho_estimator="acc"))
    assert [r["trace"] for r in unchecked][1:] == ["2 + 4 = 7", "1 + 3 = 5"]  # acc alone prefers them
    with pytest.raises(DLNError, match="check_working"):  # shared weights, the check dropped: refused
        final_rows(ROWS, wrong, checked, recipe_config(rho_estimator="acc"))


# -- the online variational step (`objectives.Variational`) on the fake ----------------------------------


def hinted_traces(prompt: str, n: int) -> list[str]:
    """q's scripted samples: trace k of the hinted question, then its `Answer` line."""
    group = TRACES[0] if "answer is 7" in prompt else TRACES[1]
    answer = "7" if "answer is 7" in prompt else "5"
    return [f"{group[k % 2]}\nAnswer: {answer}" for k in range(n)]


def counts(policy, ids) -> torch.Tensor:
    c = torch.zeros(128, dtype=torch.float64)
    for i in ids:
        c[i] += 1
    return c


@pytest.mark.parametrize("objective", ["forward_kl", "iwae", "elbo"])
def test_variational_step_losses_and_gradients_by_hand(objective):
    from reasoning.reason.objectives import Variational

    k = 1 if objective == "elbo" else 2
    config = ReasonConfig(objective=objective, k=k, temperature=0.5, posterior_loss="auto")
    policy = FakePolicy(("policy", "posterior"), script=hinted_traces, seed=3)
    step = Variational(FakeTrainer(config, policy, ROWS))
    loss, metrics = step(0)
    loss.backward()
    # by hand: joint ids z + "Answer: y" + EOS under π (T = 1), z under q at T = 0.5
    joint, zs, lj, lq = [], [], [], []
    for row, group in zip(ROWS, TRACES):
        z_texts = [group[i % 2] + "\n" for i in range(k)]
        zs.append([policy.tokenizer.encode(z) for z in z_texts])
        joint.append([policy.tokenizer.encode(z + answer_suffix(z, row["answer"])) + [EOS] for z in z_texts])
        lj.append([policy.char_logprob("policy", j) for j in joint[-1]])
        lq.append([policy.char_logprob("posterior", z, temperature=0.5) for z in zs[-1]])
    lj, lq = torch.tensor(lj, dtype=torch.float64), torch.tensor(lq, dtype=torch.float64)  # (B, K)
    log_w = lj - lq
    p_pol = torch.softmax(policy.tables["policy"].detach(), 0)
    p_q = torch.softmax(policy.tables["posterior"].detach() / 0.5, 0)
    grad_pol, grad_q = torch.zeros(128, dtype=torch.float64), torch.zeros(128, dtype=torch.float64)
    if objective == "forward_kl":
        w = torch.softmax(log_w, -1)
        expected = -(w * lj).sum(-1).mean() - (w * lq).sum(-1).mean()
        coef_theta, coef_phi = w / 2, w / 2  # (B, K): d loss / d log π_bk = -coef
    elif objective == "iwae":  # θ: the same weights; φ: reverse KL with the leave-one-out baseline
        w = torch.softmax(log_w, -1)
        baseline = log_w.flip(-1)  # K = 2: the other trace's log-weight
        expected = -(w * lj).sum(-1).mean() - ((log_w - baseline) * lq).mean()
        coef_theta, coef_phi = w / 2, (log_w - baseline) / 4
    else:
        baseline = log_w.flip(0)  # K = 1: the other question's log-weight
        expected = -lj.mean() - ((log_w - baseline) * lq).mean()
        coef_theta, coef_phi = torch.full_like(lj, 0.5), (log_w - baseline) / 2
    for b in range(2):
        for i in range(k):
            n_j, n_z = len(joint[b][i]), len(zs[b][i])
            grad_pol -= coef_theta[b, i] * (counts(policy, joint[b][i]) - n_j * p_pol)
            grad_q -= coef_phi[b, i] * (counts(policy, zs[b][i]) - n_z * p_q) / 0.5
    assert loss.item() == pytest.approx(expected.item(), abs=1e-9)
    torch.testing.assert_close(policy.tables["policy"].grad, grad_pol, rtol=0, atol=1e-9)
    torch.testing.assert_close(policy.tables["posterior"].grad, grad_q, rtol=0, atol=1e-9)
    assert metrics["posterior_accuracy"] == 1.0


def test_star_rationalises_only_questions_with_no_correct_sample():
    from reasoning.reason.objectives import STaR

    def script(prompt: str, n: int) -> list[str]:
        if "The answer is" in prompt:  # rationalisation: the hint is followed
            return ["9 - 4 = 5\nAnswer: 5"] * n
        return ["3 + 4 = 7\nAnswer: 7"] * n if "add 4" in prompt else ["9 - 4 = 6\nAnswer: 6"] * n

    config = ReasonConfig(objective="star", k=2)
    policy = FakePolicy(("policy",), script=script)
    trainer = FakeTrainer(config, policy, ROWS)
    star = STaR(trainer)
    prompts = policy.encode_prompts([r["question"] for r in ROWS])
    samples, correct, metrics = star.draw(ROWS, prompts, 0)
    assert correct.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert policy.decode(samples[1][0]) == "9 - 4 = 5\nAnswer: 5"
    assert metrics == {"accuracy": 0.5, "rationalised": 0.5}
    assert [c["adapter"] for c in policy.sample_calls] == ["policy", "policy"]
    loss, _ = star(0)
    completions = [f"{z}\nAnswer: {r['answer']}" for z, r in zip(("3 + 4 = 7", "9 - 4 = 5"), ROWS)]
    lp = [policy.char_logprob("policy", policy.tokenizer.encode(c) + [EOS]) for c in completions]
    assert loss.item() == pytest.approx(-(lp[0] + lp[1]) / 2, abs=1e-9)  # RFT weights c_k / K, B = 2
    assert not any("The answer is" in p for p in trainer.scored_prompts)  # trained without the hint


def test_terms_do_not_depend_on_the_scoring_batch(scored, monkeypatch):
    import reasoning.reason.rho as rho

    policy, terms = scored
    monkeypatch.setattr(rho, "SCORE_BATCH", 3)  # 4 traces: passes of 3 and 1 sequences
    traces = [[policy.tokenizer.encode(z) for z in group] for group in TRACES]
    again = score_traces(policy, CompletionIds(policy.tokenizer), ROWS, traces, recipe_config(), seed=0)
    assert again == terms
