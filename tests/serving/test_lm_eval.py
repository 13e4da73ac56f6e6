"""lm-evaluation-harness through this server agrees with lm-eval's own HF model: the same log-likelihood per
request (to 1e-4) and the same accuracy, on a tiny local multiple-choice task (no hub).

lm-eval's `local-completions` scores a continuation by sending context + continuation token ids with
`echo: true, max_tokens: 1, logprobs: 1` and summing `token_logprobs[ctxlen:-1]`: it needs exactly one
generated token after the prompt's, also when that token is the end of the sequence. Half of the task's
questions are in the model's chat format, where the greedy token after an answer is `<|im_end|>`.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

pytest.importorskip("lm_eval")

QUESTIONS = [
    ("What colour is the sky on a clear day?", ["Blue.", "Green.", "Red.", "Black."], 0),
    ("How many legs does a cat have?", ["Two.", "Four.", "Six.", "Eight."], 1),
    ("What do bees make?", ["Milk.", "Silk.", "Honey.", "Wool."], 2),
    ("Which is the largest?", ["A mouse.", "A dog.", "A horse.", "A whale."], 3),
]
RAW = [
    ("The capital of France is", [" Paris", " Berlin", " Rome", " Madrid"], 0),
    ("Two plus two equals", [" three", " four", " five", " six"], 1),
    ("Water freezes at zero degrees", [" Kelvin", " Fahrenheit", " Celsius", " Rankine"], 2),
    ("The opposite of hot is", [" warm", " loud", " tall", " cold"], 3),
]
TASK = "dln_tiny_mc"


def chat_context(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("lm_eval_task")
    rows = [{"context": chat_context(q), "choices": c, "answer": a} for q, c, a in QUESTIONS]
    rows += [{"context": q, "choices": c, "answer": a} for q, c, a in RAW]
    (directory / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {directory / 'data.jsonl'}\n"
        f"  cache_dir: {directory / 'cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return directory


def evaluate(model, task_dir) -> tuple[dict, list[list[float]]]:
    """lm-eval's metrics and every document's per-choice log-likelihoods, in document order."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model=model,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
        bootstrap_iters=0,
    )
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    loglikelihoods = [[float(resp[0][0]) for resp in s["resps"]] for s in samples]
    return out["results"][TASK], loglikelihoods


def test_local_completions_agree_with_lm_evals_hf_model(server, hf_model, task_dir):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=hf_model.model, tokenizer=hf_model.tokenizer, batch_size=8)
    want_metrics, want = evaluate(hf, task_dir)
    remote = {
        "model": "default",
        "base_url": f"{server.base_url}/completions",
        "tokenizer": hf_model.tokenizer.name_or_path,
        "tokenizer_backend": "huggingface",
        "tokenized_requests": True,
        "batch_size": 8,
        "max_retries": 1,
    }
    got_metrics, got = evaluate_remote(remote, task_dir)
    diff = float(np.max(np.abs(np.array(got) - np.array(want))))
    print(f"hf: {want_metrics}\nlocal-completions: {got_metrics}\nlargest per-request difference {diff:.2e}")
    assert len(got) == len(want) == len(QUESTIONS) + len(RAW)
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-4, rtol=0)
    for metric in ("acc,none", "acc_norm,none"):
        assert got_metrics[metric] == want_metrics[metric]


def evaluate_remote(model_args: dict, task_dir):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    return evaluate(LocalCompletionsAPI(**model_args), task_dir)


def test_echo_scoring_reports_a_generated_end_of_sequence_token(server, hf_model):
    """The case lm-eval tripped on: the greedy token after the prompt ends the sequence."""
    ids = hf_model.tokenizer(chat_context(QUESTIONS[0][0]) + "Blue.").input_ids
    body = {"model": "default", "prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 1, "temperature": 0}
    response = httpx.post(f"{server.base_url}/completions", json=body, timeout=60).json()
    (choice,) = response["choices"]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1  # the prompt's tokens, then the generated one
    assert lp["tokens"][-1] == hf_model.tokenizer.eos_token
    assert lp["token_logprobs"][-1] < 0 and lp["top_logprobs"][-1] == {
        lp["tokens"][-1]: lp["token_logprobs"][-1]
    }
    assert choice["finish_reason"] == "stop" and choice["text"] == hf_model.tokenizer.decode(ids)
    assert response["usage"]["completion_tokens"] == 1
    assert lp["text_offset"][-1] == len(choice["text"])  # where the (textless) token would start
