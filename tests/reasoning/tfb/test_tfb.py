"""TFB: the noise is isotropic in each LoRA subspace, the σ search returns the largest σ within tolerance,
S = 0 is the MAP exactly, the metrics match hand-computed values, and a Bayesianized adapter round-trips.

The math tests run on a tiny randomly initialised Llama with the real tokenizer; one CLI test runs the real
default model end to end.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from dln.cli import main
from dln.errors import DLNError
from reasoning.tfb.baselines import fit_temperature, scale
from reasoning.tfb.bayesian_lora import BayesianLoRA
from reasoning.tfb.config import MapTrainConfig
from reasoning.tfb.labels import LabelScorer
from reasoning.tfb.map_train import add_lora
from reasoning.tfb.metrics import accuracy, all_metrics, brier, ece, nll
from reasoning.tfb.posterior import AnchorScore, lora_pairs, sampled_weights, search_sigma

LABELS = ["good", "bad"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from dln.lm.default_model import ensure_default_model

    tok = AutoTokenizer.from_pretrained(str(ensure_default_model()), local_files_only=True)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def tiny_lora_model(tokenizer, seed: int = 0, rank: int = 4, save_base_to=None):
    """A 2-layer Llama (hidden 32) with LoRA on q_proj/v_proj whose B factors are random (not zero)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    base = LlamaForCausalLM(config)
    if save_base_to is not None:
        base.save_pretrained(str(save_base_to))
        tokenizer.save_pretrained(str(save_base_to))
    model = add_lora(base, MapTrainConfig(lora_rank=rank, seed=seed, lora_dropout=0.1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    model.eval()
    return model


def test_noise_is_isotropic_sigma2_in_the_low_rank_subspace(tokenizer):
    model = tiny_lora_model(tokenizer)
    pairs = lora_pairs(model)
    assert len(pairs) == 4  # 2 layers x (q_proj, v_proj)
    pair = next(p for p in pairs if p.name.endswith("layers.0.self_attn.q_proj"))
    s = 16.0 / 4  # alpha / r
    # the re-parametrisation keeps the update: s B' A' = s B A
    torch.testing.assert_close(
        s * pair.b_prime @ pair.a_prime, s * pair.b_map @ pair.a_map, atol=1e-5, rtol=1e-5
    )
    sigma, draws = 0.3, 3000
    generator = torch.Generator().manual_seed(0)
    noise = []
    for _ in range(draws):
        with sampled_weights(pairs, sigma, generator):
            # ΔW noise, (out, in)
            delta = s * (pair.b_weight @ pair.a_weight) - s * (pair.b_map @ pair.a_map)
            noise.append(delta.detach().double())
    noise = torch.stack(noise)  # (draws, out, in)
    u, _, _ = torch.linalg.svd(pair.b_map.double(), full_matrices=False)
    projector = u @ u.T  # (out, out), rank r
    columns = noise.permute(0, 2, 1).reshape(-1, noise.shape[1])  # all columns of all draws, (draws*in, out)
    covariance = columns.T @ columns / len(columns)
    error = (covariance / sigma**2 - projector).abs().max()
    assert error < 0.05, error
    # the eigenvalues: r of them σ², the rest 0 (nothing leaves the adapter's column space)
    eig = torch.linalg.eigvalsh(covariance / sigma**2).flip(0)
    assert torch.allclose(eig[:4], torch.ones(4, dtype=eig.dtype), atol=0.05) and eig[4:].abs().max() < 1e-6
    # two different columns of ΔW are uncorrelated
    cross = noise[:, :, 0].T @ noise[:, :, 1] / draws
    assert cross.abs().max() / sigma**2 < 0.1
    # the MAP factors are back, bit for bit
    assert torch.equal(pair.a_weight, pair.a_map) and torch.equal(pair.b_weight, pair.b_map)


def monotone_acc(boundary: float):
    """An anchor score whose accuracy falls by σ / boundary * 0.01: drop <= 0.01 iff σ <= boundary."""
    calls = []

    def evaluate(sigma: float) -> AnchorScore:
        calls.append(sigma)
        return AnchorScore(accuracy=1.0 - 0.01 * sigma / boundary, nll=0.2 * (1.0 + sigma))

    return evaluate, calls


@pytest.mark.parametrize("boundary", [0.0123, 0.5, 3e-4])
def test_sigma_search_returns_the_largest_sigma_within_tolerance(boundary):
    evaluate, _ = monotone_acc(boundary)
    steps = 12
    result = search_sigma(evaluate, metric="acc", tolerance=0.01, sigma_min=1e-4, sigma_max=1.0, steps=steps)
    resolution = (1.0 / 1e-4) ** (1.0 / 2**steps)
    assert result.sigma <= boundary * (1 + 1e-12)  # within tolerance, never the first σ that exceeds it
    assert result.sigma >= boundary / resolution  # and the largest up to the bisection's resolution
    assert all(t["within"] == (t["sigma"] <= boundary * (1 + 1e-12)) for t in result.trace)


def test_sigma_search_nll_is_relative_to_the_mean_nll_not_divided_by_the_anchor_size():
    # NLL(σ) = 0.2 (1 + σ): relative increase σ, so tolerance 0.05 puts the boundary at σ = 0.05, whatever
    # the anchor size (the reference's tolerance / N would put it at 0.05 / N).
    evaluate, _ = monotone_acc(1.0)
    result = search_sigma(evaluate, metric="nll", tolerance=0.05, sigma_min=1e-4, sigma_max=1.0, steps=14)
    assert 0.05 / (1e4 ** (1 / 2**14)) <= result.sigma <= 0.05 + 1e-12


def test_sigma_search_edges_and_errors():
    evaluate, _ = monotone_acc(10.0)
    assert search_sigma(evaluate, sigma_max=1.0).sigma == 1.0  # everything within: the top of the range
    evaluate, _ = monotone_acc(1e-6)
    result = search_sigma(evaluate, sigma_min=1e-4)
    assert result.sigma == 0.0 and "MAP" in result.note  # nothing within: the MAP
    # a step function: the search finds the jump
    step = lambda s: AnchorScore(1.0 if s <= 0.037 else 0.5, 0.1)  # noqa: E731
    result = search_sigma(step, tolerance=0.01, steps=16)
    assert 0.037 / (1e4 ** (1 / 2**16)) <= result.sigma <= 0.037
    with pytest.raises(DLNError, match="metric"):
        search_sigma(step, metric="ece")
    with pytest.raises(DLNError, match="sigma_min"):
        search_sigma(step, sigma_min=1.0, sigma_max=0.1)


def tiny_bayes(tokenizer, sigma=0.5, labels=LABELS, save_base_to=None):
    model = tiny_lora_model(tokenizer, save_base_to=save_base_to)
    scorer = LabelScorer(model, tokenizer, labels, prompt="Good or bad?")
    meta = {
        "base_model": "default",
        "task": "sentiment",
        "labels": labels,
        "prompt": "Good or bad?",
        "template": scorer.layer.template,
    }
    return BayesianLoRA(model, scorer, sigma, meta)


INPUTS = ["The food was great.", "This blender made me very angry.", "Worth every penny."]


def test_s0_is_the_map_exactly_and_sampling_restores_it(tokenizer):
    bayes = tiny_bayes(tokenizer, sigma=0.5)
    encoded = bayes.scorer.encode(INPUTS)
    with torch.no_grad():
        map_probs = torch.softmax(bayes.scorer.log_probs(encoded).double(), dim=1).numpy()
    before = bayes.predict_proba(INPUTS, samples=0)
    assert np.array_equal(before, map_probs)
    noisy = bayes.predict_proba(INPUTS, samples=3, seed=1)
    assert not np.allclose(noisy, map_probs)  # σ = 0.5 moves the prediction
    np.testing.assert_allclose(noisy.sum(axis=1), 1.0, atol=1e-9)
    assert np.array_equal(bayes.predict_proba(INPUTS, samples=0), before)  # weights restored exactly
    np.testing.assert_allclose(bayes.predict_proba(INPUTS, samples=2, sigma=0.0), map_probs, atol=1e-5)
    np.testing.assert_array_equal(noisy, bayes.predict_proba(INPUTS, samples=3, seed=1))  # seeded


def test_label_scorer_matches_classify_for_single_and_multi_token_labels(tokenizer):
    from dln.lm.hf import HFLanguageModel

    model = tiny_lora_model(tokenizer)
    for labels in (["good", "bad"], ["sports", "food", "tech"]):  # "sports" is two tokens
        scorer = LabelScorer(model, tokenizer, labels, prompt="Which one?")
        assert scorer.single_token == (labels == ["good", "bad"])
        lm = HFLanguageModel("tiny", model=model, tokenizer=tokenizer, device="cpu")
        with torch.no_grad():
            ours = scorer.log_probs(scorer.encode(INPUTS)).double().numpy()
        theirs = scorer.layer.classify(lm, INPUTS, labels)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # per-row label sets: a label the row does not offer gets probability 0
    scorer = LabelScorer(model, tokenizer, ["A", "B", "C"])
    with torch.no_grad():
        probs = scorer.log_probs(scorer.encode(INPUTS[:2]), scorer.label_mask([["A", "B"], []], 2)).exp()
    assert probs[0, 2] == 0 and torch.allclose(probs.sum(1), torch.ones(2))
    with pytest.raises(DLNError, match="label set"):
        scorer.label_mask([["Z"]], 1)


def test_metrics_match_hand_computed_values():
    probs = np.array([[0.9, 0.1], [0.62, 0.38], [0.3, 0.7], [0.22, 0.78]])
    targets = np.array([0, 1, 1, 1])
    assert accuracy(probs, targets) == 0.75
    # confidences 0.9, 0.62, 0.7, 0.78 fall in four different bins of width 1/15; correct: 1, 0, 1, 1
    assert math.isclose(ece(probs, targets), (0.1 + 0.62 + 0.3 + 0.22) / 4)
    hand_nll = -(math.log(0.9) + math.log(0.38) + math.log(0.7) + math.log(0.78)) / 4
    assert math.isclose(nll(probs, targets), hand_nll)
    assert math.isclose(brier(probs, targets), (2 * 0.1**2 + 2 * 0.62**2 + 2 * 0.3**2 + 2 * 0.22**2) / 4)
    # two examples in one bin: |acc - conf| of the bin, weighted by its share
    assert math.isclose(ece(np.array([[0.91, 0.09], [0.92, 0.08]]), np.array([0, 1])), abs(0.5 - 0.915))
    assert all_metrics(probs, targets)["acc"] == 0.75
    assert math.isclose(brier(np.array([[0.2, 0.5, 0.3]]), np.array([1])), 0.04 + 0.25 + 0.09)


def test_temperature_scaling_recovers_the_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(4000, 3))
    true_probs = scale(logits, 2.0)
    targets = np.array([rng.choice(3, p=p) for p in true_probs])
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    temperature = fit_temperature(log_probs, targets)
    assert 1.8 < temperature < 2.2
    best = nll(scale(log_probs, temperature), targets)
    assert best <= nll(scale(log_probs, temperature * 1.1), targets)
    assert best <= nll(scale(log_probs, temperature / 1.1), targets)
    masked = scale(np.array([[0.0, -np.inf, -1.0]]), 2.0)
    assert masked[0, 1] == 0 and math.isclose(masked.sum(), 1.0)


def test_bayesianized_adapter_round_trips(tokenizer, tmp_path):
    base_dir = tmp_path / "tiny-base"
    bayes = tiny_bayes(tokenizer, sigma=0.0, save_base_to=base_dir)
    bayes.meta["base_model"] = str(base_dir)
    result = bayes.fit(
        INPUTS, metric="acc", tolerance=0.0, samples=2, sigma_min=1e-3, sigma_max=10.0, steps=3
    )
    assert bayes.sigma == result.sigma and len(result.trace) >= 2
    bayes.sigma = 0.25  # a value the test controls
    bayes.save(tmp_path / "A-tfb")
    saved = json.loads((tmp_path / "A-tfb" / "tfb.json").read_text())
    assert saved["sigma"] == 0.25 and saved["search"]["anchor_size"] == 3
    assert (tmp_path / "A-tfb" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "A-tfb" / "README.md").exists()  # PEFT's card would name a local path
    loaded = BayesianLoRA.load(tmp_path / "A-tfb")  # one call: base model, adapter, σ
    assert loaded.sigma == 0.25 and loaded.labels == LABELS
    np.testing.assert_allclose(
        loaded.predict_proba(INPUTS, samples=0), bayes.predict_proba(INPUTS, samples=0), atol=1e-6
    )
    np.testing.assert_allclose(
        loaded.predict_proba(INPUTS, samples=3, seed=2),
        bayes.predict_proba(INPUTS, samples=3, seed=2),
        atol=1e-5,
    )


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["tfb", "eval", "--adapter", str(tmp_path / "missing")]) == 2
    assert "dln tfb train-map" in capsys.readouterr().err
    (tmp_path / "notanadapter").mkdir()
    assert (
        main(["tfb", "fit", "--adapter", str(tmp_path / "notanadapter"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "tfb_task.json" in capsys.readouterr().err
    assert main(["tfb", "train-map", "--out", str(tmp_path / "A")]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["tfb", "train-map", "--task", "sentiment", "--out", str(tmp_path / "A"), "--rnak", "4"]) == 2
    assert "unknown key(s) rnak" in capsys.readouterr().err


def test_cli_sigma_range_defaults_match_the_module():
    from reasoning.tfb import cli, posterior

    assert (cli.SIGMA_MIN, cli.SIGMA_MAX) == (posterior.SIGMA_MIN, posterior.SIGMA_MAX)


@pytest.mark.slow
def test_cli_train_fit_eval_on_the_default_model(tmp_path, capsys):
    adapter, bayesian = tmp_path / "A", tmp_path / "A-tfb"
    anchor, test = tmp_path / "anchor.jsonl", tmp_path / "test.jsonl"
    anchor.write_text("".join(json.dumps({"input": x}) + "\n" for x in INPUTS))
    targets = ["good", "bad", "good"]
    test.write_text("".join(json.dumps({"input": x, "target": y}) + "\n" for x, y in zip(INPUTS, targets)))
    assert (
        main(
            [
                "tfb",
                "train-map",
                "--task",
                "sentiment",
                "--out",
                str(adapter),
                "--quiet",
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--train-limit",
                "16",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["task"] == "sentiment"
    assert (
        main(
            [
                "tfb",
                "fit",
                "--adapter",
                str(adapter),
                "--anchor",
                str(anchor),
                "--metric",
                "acc",
                "--tolerance",
                "0.01",
                "--samples",
                "1",
                "--steps",
                "2",
                "--out",
                str(bayesian),
            ]
        )
        == 0
    )
    fitted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert fitted["sigma"] >= 0 and (bayesian / "tfb.json").is_file()
    assert main(["tfb", "eval", "--adapter", str(bayesian), "--data", str(test), "--samples", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == 3 and metrics["method"] == "tfb" and 0 <= metrics["ece"] <= 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input": "x", "target": "maybe"}) + "\n")
    assert main(["tfb", "eval", "--adapter", str(bayesian), "--data", str(bad)]) == 2
    assert "not one of the adapter's labels" in capsys.readouterr().err


def test_mc_dropout_averages_dropout_passes_and_switches_dropout_off_again(tokenizer):
    from peft.tuners.lora import LoraLayer

    bayes = tiny_bayes(tokenizer)
    map_probs = bayes.predict_proba(INPUTS, samples=0)
    probs = bayes.mc_dropout_proba(INPUTS, samples=4, seed=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert not np.allclose(probs, map_probs, atol=1e-7)  # dropout was on
    np.testing.assert_allclose(bayes.mc_dropout_proba(INPUTS, samples=4, seed=1), probs, atol=1e-9)  # seeded
    dropouts = [d for m in bayes.model.modules() if isinstance(m, LoraLayer) for d in m.lora_dropout.values()]
    assert not any(d.training for d in dropouts)
    np.testing.assert_allclose(bayes.predict_proba(INPUTS, samples=0), map_probs, atol=1e-9)
