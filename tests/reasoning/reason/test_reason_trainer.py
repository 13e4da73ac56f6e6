"""Short real runs of `reasoning.reason.trainer` on the default model (SmolLM2-135M, CPU): a variational
run raises log π(gold | x) on held-out questions, an interrupted run resumes to the uninterrupted result,
and `accelerate launch` with two CPU processes trains to the same result shape as one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from reasoning.reason.config import ReasonConfig
from reasoning.reason.tasks import format_completion, policy_prompt
from reasoning.reason.trainer import ReasonTrainer

TINY = dict(n_train=64, n_test=8, batch_size=2, max_new_tokens=24, eval_size=0, progress=False, lr=1e-3)


def gold_logprob(trainer: ReasonTrainer) -> float:
    """Mean log π(z*, y | x) of the held-out gold completions under the policy adapter."""
    rows = list(trainer.task.test)
    policy = trainer.policy
    prompts = policy.encode_prompts([policy_prompt(r["question"]) for r in rows])
    gold = [trainer.continuation(format_completion(r["trace"], r["answer"])) for r in rows]
    with torch.no_grad(), policy.use("policy"):
        return policy.logprobs(prompts, gold).mean().item()


# one forward-KL run (2 warm-up + 3 objective updates, traces of at most 16 tokens), trained once for the
# two tests that read it; checkpoints after updates 3 and 5
FKL = {**TINY, "max_new_tokens": 16}
FKL.update(objective="forward_kl", steps=3, k=2, posterior_warmup_steps=2, save_every=3)


@pytest.fixture(scope="module")
def fkl_run(tmp_path_factory):
    """The uninterrupted run: its directory, summary and held-out gold log-prob before and after."""
    run = tmp_path_factory.mktemp("fkl") / "full"
    trainer = ReasonTrainer(ReasonConfig(**FKL), run)
    before = gold_logprob(trainer)
    summary = trainer.fit()
    return {"run": run, "summary": summary, "before": before, "after": gold_logprob(trainer)}


def test_forward_kl_run_raises_heldout_gold_likelihood(fkl_run):
    run, summary, before, after = fkl_run["run"], fkl_run["summary"], fkl_run["before"], fkl_run["after"]
    assert summary["finished"] and summary["step"] == 5
    assert after > before + 2.0, (before, after)  # nats per held-out completion (measured: +4.9)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert {"elbo", "bound", "ess", "trace_len", "answer_prob", "posterior_accuracy"} <= set(rows[-1])
    assert all(r["elbo"] <= r["bound"] + 1e-9 and 1 <= r["ess"] <= 2 + 1e-9 for r in rows[2:])
    for name in ("policy", "posterior"):
        assert (run / name / "adapter_config.json").is_file()


def _adapter(run, name: str = "policy") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "adapter_model.safetensors"))


def test_interrupted_run_resumes_to_the_uninterrupted_result(fkl_run, tmp_path):
    """A run killed after update 3 of 5 (past q's warm-up), resumed: both adapters and every loss match.

    The killed run starts from the uninterrupted run's own checkpoint after update 3 (written by the same
    `save_every` rule), so only updates 4 and 5 are trained again: it is killed once more after update 4,
    before any checkpoint, and then resumed to the end.
    """
    config, cut = ReasonConfig(**FKL), tmp_path / "cut"
    shutil.copytree(fkl_run["run"], cut)
    for later in ("policy", "posterior", "checkpoints/step-000005"):
        shutil.rmtree(cut / later)
    first = ReasonTrainer(config, cut).fit(stop_after=1)  # "killed" after update 4 of 5, no checkpoint
    assert not first["finished"] and first["step"] == 4 and not (cut / "policy").exists()
    resumed = ReasonTrainer(config, cut).fit()
    assert resumed["finished"] and resumed["step"] == 5
    for adapter in ("policy", "posterior"):
        full, again = _adapter(fkl_run["run"], adapter), _adapter(cut, adapter)
        assert full.keys() == again.keys()
        for name in full:
            torch.testing.assert_close(full[name], again[name], rtol=0, atol=1e-6)
    metrics = [(d / "metrics.jsonl").read_text().splitlines() for d in (fkl_run["run"], cut)]
    assert [json.loads(x)["loss"] for x in metrics[0]] == pytest.approx(
        [json.loads(x)["loss"] for x in metrics[1]]
    )


def test_resuming_with_another_config_is_refused(tmp_path):
    from dln.errors import DLNError
    from dln.rundir import RunDir

    ReasonTrainer(ReasonConfig(objective="sft", steps=1, **TINY), tmp_path).start()
    with pytest.raises(DLNError, match="different config"):
        ReasonTrainer(ReasonConfig(objective="sft", steps=2, **TINY), tmp_path).start()
    # what may change on resume: the progress bar and the evaluation size
    resumed = ReasonConfig(objective="sft", steps=1, **{**TINY, "eval_size": 3, "progress": True})
    assert RunDir(tmp_path).start(resumed, ignored=ReasonConfig.RESUME_IGNORED)


def test_grpo_trl_resuming_with_another_config_is_refused(tmp_path):
    """grpo_trl checks a resumed run's config through the same `RunDir.start`, before TRL starts."""
    from dln.errors import DLNError
    from dln.rundir import RunDir
    from reasoning.reason.grpo_trl import train_grpo_trl

    first = ReasonConfig(objective="grpo_trl", steps=1, k=2, **TINY)
    RunDir(tmp_path).start(first, ignored=ReasonConfig.RESUME_IGNORED)
    with pytest.raises(DLNError, match="different config"):
        train_grpo_trl(ReasonConfig(objective="grpo_trl", steps=2, k=2, **TINY), tmp_path)


def test_accelerate_launch_two_cpu_processes(tmp_path):
    """Two processes (torchrun launcher, gloo on CPU) train to the same result shape as one."""
    args = [
        "reason",
        "train",
        "--objective",
        "sft",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--eval-size",
        "0",
        "--n-train",
        "32",
        "--n-test",
        "4",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "dln",
    ]
    summaries = {}
    for name, cmd in {"two": launch + args, "one": [sys.executable, "-m", "dln"] + args}.items():
        done = subprocess.run(
            cmd + ["--out", str(tmp_path / name)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[name] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summaries["two"]["processes"] == 2 and summaries["one"]["processes"] == 1
    assert summaries["two"]["finished"] and summaries["two"]["step"] == summaries["one"]["step"] == 2
    rows = {
        n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in summaries
    }
    assert [sorted(r) for r in rows["two"]] == [sorted(r) for r in rows["one"]]
    two, one = _adapter(tmp_path / "two"), _adapter(tmp_path / "one")
    assert {k: v.shape for k, v in two.items()} == {k: v.shape for k, v in one.items()}
    assert any(not torch.equal(two[k], one[k]) for k in two)  # the second process's data changed the update


def test_grpo_with_trl_grpotrainer_saves_a_loadable_adapter(tmp_path):
    """grpo_trl: TRL's GRPOTrainer, same reward and budget; its adapter loads as hf:<run>/policy."""
    from dln.lm import load_model
    from reasoning.reason.grpo_trl import checked_correctness_reward, correctness_reward, train_grpo_trl

    assert correctness_reward([[{"content": "1 + 1 = 2\nAnswer: 2"}], "Answer: 3"], ["2", "2"]) == [1.0, 0.0]
    wrong_working = [[{"content": "1 + 2 = 2\nAnswer: 2"}]]  # the right answer after a wrong equation
    assert correctness_reward(wrong_working, ["2"]) == [1.0]
    assert checked_correctness_reward(wrong_working, ["2"]) == [0.0]
    config = ReasonConfig(
        objective="grpo_trl", steps=1, k=2, **{**TINY, "max_new_tokens": 12, "eval_size": 2}
    )
    summary = train_grpo_trl(config, tmp_path / "run")
    assert summary["finished"] and summary["eval"]["n"] == 2
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1 and {"loss", "accuracy", "trace_len"} <= set(row)
    model = load_model(f"hf:{tmp_path / 'run' / 'policy'}", cache=False)
    assert len(model.generate(["Start at 2, add 1, double it, add 3."], max_tokens=4)[0]) == 1


def test_init_policy_starts_pi_from_a_saved_adapter_and_names_a_bad_one(tmp_path):
    from dln.errors import DLNError

    sft = ReasonTrainer(ReasonConfig(objective="sft", steps=1, **TINY), tmp_path / "sft")
    sft.fit()
    trained = gold_logprob(sft)
    # STaR after SFT: π starts as the SFT adapter (a run directory resolves to its policy/), not the base
    star = ReasonTrainer(
        ReasonConfig(objective="star", steps=1, k=2, init_policy=str(tmp_path / "sft"), **TINY),
        tmp_path / "s",
    )
    assert gold_logprob(star) == pytest.approx(trained, abs=1e-4)
    base = ReasonTrainer(ReasonConfig(objective="star", steps=1, k=2, **TINY), tmp_path / "b")
    assert abs(gold_logprob(base) - trained) > 0.01
    with pytest.raises(DLNError, match="not an adapter directory"):
        ReasonTrainer(
            ReasonConfig(objective="star", k=2, init_policy=str(tmp_path / "nope"), **TINY), tmp_path
        )
    with pytest.raises(DLNError, match="lora_rank"):
        ReasonTrainer(
            ReasonConfig(objective="sft", lora_rank=4, init_policy=str(tmp_path / "sft"), **TINY),
            tmp_path / "r",
        )


def test_a_run_written_before_a_config_key_existed_resumes(tmp_path):
    """Upgrading must not orphan a run: a key missing from its config.yaml counts as the key's default."""
    import yaml

    from dln.errors import DLNError
    from dln.rundir import RunDir

    config = ReasonConfig(objective="sft", steps=1, **TINY)
    RunDir(tmp_path).start(config)
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del written["init_policy"]  # as an older release wrote it
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
    assert RunDir(tmp_path).start(config)
    with pytest.raises(DLNError, match="init_policy"):  # a value other than the default still differs
        RunDir(tmp_path).start(ReasonConfig(objective="sft", steps=1, init_policy="runs/x", **TINY))
