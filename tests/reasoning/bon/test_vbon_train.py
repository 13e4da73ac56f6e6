"""vBoN training on the real default model: raises the reward, resumes exactly, loads as hf:; CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from reasoning.bon.config import VBoNConfig
from reasoning.bon.evaluate import evaluate_policy
from reasoning.bon.trainer import ADAPTER, VBoNTrainer

SHORT_REWARD = "def short(prompt, completion):\n    return -len(completion) / 50.0\n"


def tiny_config(tmp_path, **overrides) -> VBoNConfig:
    script = tmp_path / "short_reward.py"
    script.write_text(SHORT_REWARD)
    values = dict(
        reward=f"{script}:short",
        train_prompts=8,
        prompts_per_step=4,
        samples_per_prompt=4,
        reference_samples=8,
        max_new_tokens=12,
        steps=6,
        lr=5e-3,
        bon_n=16,
        save_every=100,
        progress=False,
    )
    values.update(overrides)
    return VBoNConfig(**values)


@pytest.mark.slow
def test_vbon_training_raises_the_reward_and_loads_as_an_hf_model(tmp_path, isolated_home):
    config = tiny_config(tmp_path)
    trainer = VBoNTrainer(config, tmp_path / "run", progress=False)
    prompts = trainer.prompts[:8]
    before = evaluate_policy(trainer.policy, ADAPTER, "before", prompts, trainer.reward, config, k=8)
    adapter = trainer.fit()
    after = evaluate_policy(trainer.policy, ADAPTER, "after", prompts, trainer.reward, config, k=8)
    assert before.kl == pytest.approx(0.0, abs=1e-4)  # a fresh adapter is the reference
    assert after.reward > before.reward + 0.1, (before, after)
    assert after.kl > 0.0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["log_cdf"] <= 0.0 for r in rows)
    # the reference CDF was drawn once and cached under DLN_HOME
    assert len(trainer.reference.table) == 8 and trainer.reference.path.is_relative_to(isolated_home)

    from dln.lm import load_model

    model = load_model(f"hf:{adapter}", cache=False)
    ids = trainer.policy.encode_prompts([prompts[0]], chat=False)
    completion = trainer.policy.sample(ids, n=1, max_new_tokens=8, seed=3)[0][0]
    with trainer.policy.use(ADAPTER), torch.no_grad():
        expected = trainer.policy.logprobs(ids, [completion], exact=True).item()
    got = sum(model.score([prompts[0]], [trainer.policy.tokenizer.decode(completion)])[0])
    assert got == pytest.approx(expected, abs=2e-3)


def adapter_weights(trainer: VBoNTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if "lora_" in n}


def test_a_killed_run_resumes_to_the_same_adapter(tmp_path, isolated_home):
    config = dict(
        objective="kl_rl", steps=3, save_every=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=6
    )
    straight = VBoNTrainer(tiny_config(tmp_path, **config), tmp_path / "straight", progress=False)
    straight.fit()
    killed = VBoNTrainer(tiny_config(tmp_path, **config), tmp_path / "killed", progress=False)
    killed.fit(stop_after=1)  # as if killed after the first checkpoint
    assert not (tmp_path / "killed" / ADAPTER).exists()
    resumed = VBoNTrainer(tiny_config(tmp_path, **config), tmp_path / "killed", progress=False)
    resumed.fit()
    want, got = adapter_weights(straight), adapter_weights(resumed)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6)
    assert any(w.abs().sum() > 0 for n, w in want.items() if "lora_B" in n)  # it did train
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3]

    result = dln(
        "bon",
        "eval",
        "--run",
        str(tmp_path / "killed"),
        "--limit",
        "2",
        "--samples",
        "2",
        env_home=isolated_home,
    )
    assert result.returncode == 0, result.stderr
    point = json.loads(result.stdout.strip().splitlines()[-1])
    assert point["samples"] == 4 and point["reward"] <= 0.0
    assert point["kl"] == point["kl"]  # a number, not NaN


def dln(*args, env_home=None):
    return subprocess.run(
        [sys.executable, "-m", "dln", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env_home is None else {**os.environ, "DLN_HOME": str(env_home)},
    )


def test_cli_best_of_n_sample_returns_the_best_candidate(isolated_home):
    result = dln(
        "bon",
        "sample",
        "--reward",
        "length",
        "-n",
        "3",
        "--max-tokens",
        "8",
        "--seed",
        "0",
        "--no-cache",
        "The film",
        env_home=isolated_home,
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.strip().splitlines()[-1])
    rewards = [c["reward"] for c in row["candidates"]]
    assert len(rewards) == 3 and row["reward"] == max(rewards)
    assert row["best"] == row["candidates"][rewards.index(max(rewards))]["text"]
    assert row["reward"] == len(row["best"])


def test_cli_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: vbon\nbon_n: 1\n")
    result = dln("bon", "train", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and "bon_n must be >= 2" in result.stderr
    result = dln("bon", "train", "--out", str(tmp_path / "r"), "--no-such-key", "1")
    assert result.returncode == 2 and "unknown key(s) no_such_key" in result.stderr
    result = dln("bon", "eval")
    assert result.returncode == 2 and "--run" in result.stderr
    result = dln("bon", "eval", "--run", str(tmp_path))
    assert result.returncode == 2 and "not a dln bon train run" in result.stderr
    result = dln("bon", "sample", "--reward", "nope", "x")
    assert result.returncode == 2 and "unknown reward" in result.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    result = dln("bon", "train", "--out", str(tmp_path / "r"), "--prompts", str(empty))
    assert result.returncode == 2 and "holds no prompts" in result.stderr


def test_a_resumed_run_with_another_config_is_refused(tmp_path, isolated_home):
    from dln.errors import DLNError

    config = dict(objective="kl_rl", steps=1, prompts_per_step=2, samples_per_prompt=2, max_new_tokens=4)
    VBoNTrainer(tiny_config(tmp_path, **config), tmp_path / "run", progress=False).fit()
    assert (tmp_path / "run" / "config.yaml").is_file()
    changed = VBoNTrainer(tiny_config(tmp_path, **config, lr=0.5), tmp_path / "run", progress=False)
    with pytest.raises(DLNError, match="different config"):
        changed.fit()
