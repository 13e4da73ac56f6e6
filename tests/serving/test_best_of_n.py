"""Best-of-N: n samples ranked by a registered reward (extension field `reward`), or best_of by log-prob."""

from __future__ import annotations

import importlib.util

import pytest

from dln.errors import DLNError
from serving.reward_registry import RewardRegistry, length_reward, load_reward_spec

FIELDS = dict(
    model="default", prompt="Write a short sentence about cats:", max_tokens=12, temperature=1.0, seed=5
)


def test_the_reward_picks_the_best_of_n_samples(server):
    samples = [c.text for c in server.client.completions.create(n=4, **FIELDS).choices]
    best = server.client.completions.create(n=4, extra_body={"reward": "length"}, **FIELDS)
    (choice,) = best.choices
    rewards = choice.model_extra["rewards"]
    assert rewards == [float(len(s)) for s in samples]  # same seed: the same four samples, scored
    assert choice.model_extra["reward"] == max(rewards) == len(choice.text)
    assert choice.text in samples
    assert best.usage.completion_tokens > 0


def test_a_registered_reward_and_chat(server):
    server.state.rewards.add("shortest", lambda prompt, completion: -float(len(completion)))
    response = server.client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Say something."}],
        n=3,
        max_tokens=10,
        temperature=1.0,
        seed=2,
        extra_body={"reward": "shortest"},
    )
    (choice,) = response.choices
    rewards = choice.model_extra["rewards"]
    assert len(rewards) == 3 and choice.model_extra["reward"] == max(rewards) == -len(choice.message.content)


def test_best_of_without_a_reward_ranks_by_mean_logprob(server):
    response = server.client.completions.create(best_of=3, n=1, logprobs=0, **FIELDS)
    (choice,) = response.choices
    samples = server.client.completions.create(n=3, logprobs=0, **FIELDS).choices
    means = [sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in samples]
    assert choice.text == samples[max(range(3), key=means.__getitem__)].text
    assert response.usage.completion_tokens == sum(
        len(c.logprobs.tokens) for c in samples
    )  # all 3 are paid for


def test_streaming_a_best_of_n_request(server):
    chunks = list(
        server.client.completions.create(n=4, stream=True, extra_body={"reward": "length"}, **FIELDS)
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    best = server.client.completions.create(n=4, extra_body={"reward": "length"}, **FIELDS).choices[0].text
    assert text == best


def test_reward_specs(tmp_path):
    assert load_reward_spec("len=serving.reward_registry:length_reward") == ("len", length_reward)
    path = tmp_path / "my_reward.py"
    path.write_text("def score(prompt, completion):\n    return 1.0 if 'cat' in completion else 0.0\n")
    name, function = load_reward_spec(f"cat={path}:score")
    assert name == "cat" and function("p", "a cat") == 1.0
    with pytest.raises(DLNError):
        load_reward_spec("bad=serving.reward_registry:no_such_function")
    with pytest.raises(DLNError):
        load_reward_spec("bad=no_such_module_anywhere:f")
    with pytest.raises(DLNError):
        load_reward_spec("missing-colon=serving.reward_registry")


def test_vader_is_built_in_only_when_installed():
    names = RewardRegistry().names()
    assert "length" in names
    assert ("vader" in names) == (importlib.util.find_spec("vaderSentiment") is not None)
