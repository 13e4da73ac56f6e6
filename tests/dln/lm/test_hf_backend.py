"""The transformers backend against direct transformers forwards on the real default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

CONTEXTS = [
    "The capital of France is",
    "Q: What is 2 + 2?\nA:",
    "Once upon a time, a small cat sat on a mat and",
    "x",
]
CONTINUATIONS = [" Paris", " 4, of course.", " fell asleep in the warm sun", " y z"]
CHAT = [{"role": "user", "content": "Name one colour."}]


def direct_token_logprobs(model, context_ids: list[int], continuation_ids: list[int]) -> list[float]:
    """One plain forward over the concatenated ids: the reference the backend must match."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model.model(ids).logits[0].float(), dim=-1)  # (T, V)
    return [logprobs[len(context_ids) - 1 + j, t].item() for j, t in enumerate(continuation_ids)]


def test_score_matches_a_direct_forward(hf_model):
    scores = hf_model.score(CONTEXTS, CONTINUATIONS)
    tok = hf_model.tokenizer
    for context, continuation, got in zip(CONTEXTS, CONTINUATIONS, scores):
        cont_ids = tok(continuation, add_special_tokens=False).input_ids
        want = direct_token_logprobs(hf_model, tok(context).input_ids, cont_ids)
        assert len(got) == len(cont_ids)
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_chat_context_is_scored_through_the_chat_template(hf_model):
    (got,) = hf_model.score([CHAT], ["Blue"])
    tok = hf_model.tokenizer
    rendered = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert rendered.rstrip().endswith("assistant")
    want = direct_token_logprobs(
        hf_model,
        tok(rendered, add_special_tokens=False).input_ids,
        tok("Blue", add_special_tokens=False).input_ids,
    )
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_batched_score_equals_one_by_one(hf_model):
    batched = hf_model.score(CONTEXTS, CONTINUATIONS)
    for context, continuation, row in zip(CONTEXTS, CONTINUATIONS, batched):
        np.testing.assert_allclose(hf_model.score([context], [continuation])[0], row, atol=1e-4)


def test_score_of_an_empty_continuation_is_empty(hf_model):
    assert hf_model.score(["Hello"], [""]) == [[]]


def test_classify_is_normalised_and_matches_score(hf_model):
    labels = [" yes", " no", " maybe not"]
    prompts = ["Is the sky blue? Answer:", "Is fire cold? Answer:"]
    logprobs = hf_model.classify(prompts, labels)
    assert logprobs.shape == (2, 3)
    np.testing.assert_allclose(np.exp(logprobs).sum(axis=1), 1.0, atol=1e-6)
    totals = [[sum(hf_model.score([p], [lab])[0]) for lab in labels] for p in prompts]
    want = np.array(totals) - np.logaddexp.reduce(np.array(totals), axis=1, keepdims=True)
    np.testing.assert_allclose(logprobs, want, atol=1e-4)


def test_greedy_generation_is_deterministic_and_batch_independent(hf_model):
    prompts = ["The capital of France is", CHAT, "1, 2, 3, 4,"]
    first = hf_model.generate(prompts, max_tokens=12)
    assert first == hf_model.generate(prompts, max_tokens=12)
    assert [hf_model.generate([p], max_tokens=12)[0] for p in prompts] == first
    assert all(len(c) == 1 and c[0].strip() for c in first)


def test_chat_prompt_generates_like_its_rendered_template(hf_model):
    rendered = hf_model.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    as_chat = hf_model.generate([CHAT], max_tokens=10)
    assert as_chat[0][0].strip()
    # the raw string gets no extra special tokens from this tokenizer, so both are the same token ids
    assert hf_model.generate([rendered], max_tokens=10) == as_chat


def test_seeded_sampling_is_reproducible_and_seed_dependent(hf_model):
    kwargs = dict(n=3, temperature=1.0, max_tokens=12)
    a = hf_model.generate(["Once upon a time"], seed=7, **kwargs)
    assert a == hf_model.generate(["Once upon a time"], seed=7, **kwargs)
    # the same prompt inside a bigger batch gets the same samples
    assert hf_model.generate(["Hello", "Once upon a time"], seed=7, **kwargs)[1] == a[0]
    assert hf_model.generate(["Once upon a time"], seed=8, **kwargs) != a
    assert len(set(a[0])) > 1  # n samples are not copies


def reference_samples(hf_model, ids: list[int], *, seed: int, temperature: float, top_p: float, tokens: int):
    """Two samples of one prompt by the sampling rule written out: a full forward per step (no cache), one
    float64 uniform per row from the prompt's generator, and the first token whose float64 cdf exceeds it."""
    from dln.lm.sampling import sampling_logits

    generator = torch.Generator().manual_seed(seed)
    rows, done = [list(ids), list(ids)], [False, False]
    end = {hf_model.tokenizer.eos_token_id, hf_model.tokenizer.pad_token_id}
    for _ in range(tokens):
        uniforms = torch.rand(2, generator=generator, dtype=torch.float64).tolist()  # drawn for done rows too
        for r in range(2):
            if done[r]:
                continue
            with torch.no_grad():
                logits = hf_model.model(torch.tensor([rows[r]])).logits[0, -1]
            probs = torch.softmax(sampling_logits(logits, temperature, top_p), -1).double().numpy()
            cdf = np.cumsum(probs)
            rows[r].append(int(np.searchsorted(cdf, uniforms[r] * cdf[-1], side="right")))
            done[r] = rows[r][-1] in end
    return [row[len(ids) :] for row in rows]


@pytest.mark.parametrize("temperature, top_p", [(0.7, 1.0), (0.9, 0.8)])
def test_batched_seeded_sampling_draws_what_the_rule_draws_per_prompt(hf_model, temperature, top_p):
    """A batch of prompts in one `generate` draws, per prompt, what the written-out rule draws: the batch,
    the padding and the KV cache change nothing (top_p < 1 filters before the draw)."""
    from dln.lm.sampling import sample_ids

    tok = hf_model.tokenizer
    prompts = [tok(p).input_ids for p in ["Once upon a time", "The weather today is", "Hi"]]
    rows, per_prompt = sample_ids(
        hf_model.model, tok, prompts, n=2, temperature=temperature, top_p=top_p, max_new_tokens=12, seed=5
    )
    assert per_prompt == 2
    for i, ids in enumerate(prompts):
        want = reference_samples(hf_model, ids, seed=5, temperature=temperature, top_p=top_p, tokens=12)
        assert rows[2 * i : 2 * i + 2] == want


def test_stop_strings_end_and_are_excluded(hf_model):
    (full,) = hf_model.generate(["Count: 1, 2, 3,"], max_tokens=20)
    assert " 5," in full[0]
    (cut,) = hf_model.generate(["Count: 1, 2, 3,"], max_tokens=20, stop=[" 5,"])
    assert cut[0] == full[0][: full[0].index(" 5,")]


def test_greedy_with_n_returns_n_copies_of_the_one_answer(hf_model):
    (single,) = hf_model.generate(["The capital of France is"], max_tokens=6)
    assert hf_model.generate(["The capital of France is"], n=3, max_tokens=6) == [single * 3]


def test_zero_max_tokens_returns_empty_completions(hf_model):
    assert hf_model.generate(["Hi", "There"], n=2, max_tokens=0) == [["", ""], ["", ""]]


@pytest.mark.parametrize("bad", [{"n": 0}, {"temperature": -1.0}, {"max_tokens": -5}])
def test_invalid_sampling_options_are_clear_errors(hf_model, bad):
    from dln import DLNError

    with pytest.raises(DLNError, match=next(iter(bad))):
        hf_model.generate(["Hi"], **bad)


def test_malformed_chat_message_is_a_clear_error(hf_model):
    from dln import DLNError

    with pytest.raises(DLNError, match="role"):
        hf_model.generate([[{"text": "hi"}]])


def test_sample_returns_the_drawn_ids_with_their_log_prob_under_the_sampling_distribution(hf_model):
    """log q must be the tempered (and top-p) density of the exact ids drawn, EOS included."""
    from dln.lm.sampling import sampling_logits

    prompt = "Once upon a time"
    samples = hf_model.sample([prompt], n=3, temperature=0.7, top_p=0.9, max_tokens=10, seed=3)[0]
    plain = hf_model.sample([prompt], n=3, temperature=0.7, max_tokens=10, seed=3)[0]
    assert [s.text for s in plain] == hf_model.generate(
        [prompt], n=3, temperature=0.7, max_tokens=10, seed=3
    )[0]
    prompt_ids = hf_model.encode_prompt(prompt)
    for s in samples:
        ids = torch.tensor([prompt_ids + list(s.token_ids)])
        with torch.no_grad():
            logits = hf_model.model(ids).logits[0, len(prompt_ids) - 1 : -1].float()  # predicts each new id
        expected = torch.log_softmax(sampling_logits(logits, 0.7, 0.9), -1)
        expected = expected.gather(1, torch.tensor(s.token_ids)[:, None]).sum().item()
        assert s.logprob == pytest.approx(expected, abs=1e-3)
        untempered = sum(hf_model.score_ids([prompt], [s.token_ids])[0])
        assert abs(untempered - s.logprob) > 1e-2  # T = 1 is another density
        assert s.text == hf_model.tokenizer.decode(list(s.token_ids), skip_special_tokens=True)


@pytest.fixture(scope="module")
def bf16_decoding():
    from dln.lm import load_model

    return load_model("hf:default", cache=False, decode_dtype="bfloat16")


def test_default_backend_decodes_with_its_own_weights(hf_model):
    assert hf_model.decoder is hf_model.model
    assert "#decode=" not in hf_model.uri  # cache keys of the fp32 decoder are unchanged


def test_bf16_decoding_is_named_in_the_uri_and_decodes_in_bf16(hf_model, bf16_decoding):
    assert bf16_decoding.uri == hf_model.uri + "#decode=bfloat16"  # no fp32 cache entry is served for it
    assert bf16_decoding.decoder.dtype == torch.bfloat16 and bf16_decoding.model.dtype == torch.float32
    (texts,) = bf16_decoding.generate(["The capital of France is"], max_tokens=8)
    assert texts[0].strip()


def test_sample_densities_stay_exact_under_bf16_decoding(hf_model, bf16_decoding):
    """`sample` (importance weights) decodes and scores with the fp32 weights whatever decode_dtype says."""
    kwargs = dict(n=2, temperature=0.8, top_p=0.9, max_tokens=10, seed=5)
    want = hf_model.sample(["Once upon a time"], **kwargs)
    got = bf16_decoding.sample(["Once upon a time"], **kwargs)
    assert [s.token_ids for s in got[0]] == [s.token_ids for s in want[0]]
    np.testing.assert_allclose([s.logprob for s in got[0]], [s.logprob for s in want[0]], atol=1e-5)


@pytest.fixture(scope="module")
def bf16_model():
    from dln.lm import load_model

    return load_model("hf:default", cache=False, dtype="bfloat16")


def test_a_bf16_model_is_named_in_the_uri_and_scores_in_bf16(hf_model, bf16_model):
    assert bf16_model.uri == hf_model.uri + "#dtype=bfloat16"  # its scores never hit the fp32 cache entries
    assert bf16_model.model.dtype == torch.bfloat16 and bf16_model.decoder is bf16_model.model
    context, continuation = ["The capital of France is"], [" Paris, a city"]
    bf16_score = bf16_model.score(context, continuation)[0]
    fp32_score = hf_model.score(context, continuation)[0]
    assert bf16_score != fp32_score and bf16_score == pytest.approx(fp32_score, abs=0.5)


def test_bf16_model_samples_carry_the_bf16_density_of_their_ids(bf16_model):
    """DLN-2 under `dtype: bfloat16`: log q of a sample is the bf16 model's own density of the drawn ids."""
    prompt = "Once upon a time"
    for s in bf16_model.sample([prompt], n=2, temperature=1.0, max_tokens=10, seed=4)[0]:
        rescored = sum(bf16_model.score_ids([prompt], [s.token_ids])[0])
        # bf16 rounds the cached decode and the full forward apart: up to 0.15 nats on 10 tokens with packed
        # oneDNN weights, 0.21 with plain F.linear (a CPU without avx512); a wrong density is nats off
        assert s.logprob == pytest.approx(rescored, abs=0.03 * len(s.token_ids))
