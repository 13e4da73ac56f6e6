"""Echo scoring runs a prefix shared by several rows once, and gives what scoring each row alone gives.

lm-eval sends each choice of a question as its own request, context + continuation; the micro-batcher puts
them in one scoring call, where the context's forward is shared (`logprobs.row_hidden_states`).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serving.backends import logprobs
from serving.backends.logprobs import MIN_SHARED, row_hidden_states, shared_prefix_groups, token_logprobs


def full_forward_hidden(lm, rows: list[list[int]]) -> torch.Tensor:
    """The reference: every row's hidden states from one plain forward over the whole row, no cache."""
    ids, mask = lm.pad(rows, side="right")
    return lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state


CONTEXT = (
    "Question: which of these animals is a mammal, the one that swims in the sea and breathes air?\nAnswer:"
)
CHOICES = [" the dolphin", " the shark", " a tuna fish", " the dolphin"]  # a repeated choice too


def test_groups_share_their_common_prefix_and_leave_every_row_a_token():
    shared = list(range(100, 100 + MIN_SHARED + 4))
    rows = [
        shared + [1, 2],
        [7] * 30,  # shares nothing with the others
        shared + [1, 3, 4],
        shared[: MIN_SHARED - 1] + [9, 9],  # too short a common prefix to group with them
        shared,  # the whole of the prefix: its group's prefix stops one token short of it
    ]
    groups, alone = shared_prefix_groups(rows)
    assert sorted(alone) == [1, 3]
    assert len(groups) == 1
    length, members = groups[0]
    assert sorted(members) == [0, 2, 4]
    assert length == len(shared) - 1
    assert all(len(rows[m]) > length and rows[m][:length] == shared[:length] for m in members)


@pytest.fixture(scope="module")
def rows(hf_model):
    context = hf_model.encode_prompt(CONTEXT)
    assert len(context) >= MIN_SHARED
    other = hf_model.encode_prompt("A sentence that shares no prefix with the question at all.")
    return [context + hf_model.encode_continuation(c) for c in CHOICES] + [other]


def test_shared_prefix_rows_score_as_each_row_alone(hf_model, rows):
    calls = []
    decoder = hf_model.model.get_decoder()
    handle = decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        shared = token_logprobs(hf_model, rows, [0, 0, 5, 0, 0], top_k=3)
    finally:
        handle.remove()
    assert len(calls) == 3  # the shared context, the four continuations on its cache, the other row
    for row, start, got in zip(rows, [0, 0, 5, 0, 0], shared, strict=True):
        hidden = full_forward_hidden(hf_model, [row])[0]
        alone = logprobs.row_logprobs(hf_model.model, hidden, row, start, 3)
        assert got.token_ids == alone.token_ids == row[start:]
        np.testing.assert_allclose(
            [np.nan if v is None else v for v in got.logprobs],
            [np.nan if v is None else v for v in alone.logprobs],
            atol=1e-4,
        )
        assert [[i for i, _ in t] for t in got.top] == [[i for i, _ in t] for t in alone.top]


@torch.inference_mode()
def test_the_hidden_states_of_the_shared_path_are_the_full_forwards(hf_model, rows):
    for chunk, hidden in row_hidden_states(hf_model, rows):
        for i, h in zip(chunk, hidden, strict=True):
            alone = full_forward_hidden(hf_model, [rows[i]])[0]
            assert h.shape == alone.shape
            np.testing.assert_allclose(h.float().numpy(), alone.float().numpy(), atol=2e-3)


PREAMBLE = "Answer each question about animals with the name of the animal, and nothing else at all.\n"
QUESTIONS = [
    "Question: which animal that lives in the sea is a mammal and breathes air through a blowhole?\nAnswer:",
    "Question: which large striped cat lives in the forests of India and hunts deer at night?\nAnswer:",
]


def test_nested_prefixes_run_each_level_once_and_score_as_each_row_alone(hf_model):
    """A shared preamble, then each question's context, then its choices: the preamble runs once, each
    context once on its cache, each question's choices once on the context's; log-probs as each row alone."""
    rows = [
        hf_model.encode_prompt(PREAMBLE + q) + hf_model.encode_continuation(c)
        for q in QUESTIONS
        for c in (" the dolphin", " the tiger")
    ]
    preamble = hf_model.encode_prompt(PREAMBLE)
    assert len(preamble) >= MIN_SHARED and all(row[: len(preamble)] == preamble for row in rows)
    calls = []
    handle = hf_model.model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    try:
        nested = token_logprobs(hf_model, rows, [0] * len(rows), top_k=0)
    finally:
        handle.remove()
    assert len(calls) == 5  # preamble, two contexts, two questions' choices
    for row, got in zip(rows, nested, strict=True):
        alone = logprobs.row_logprobs(hf_model.model, full_forward_hidden(hf_model, [row])[0], row, 0, 0)
        np.testing.assert_allclose(got.logprobs[1:], alone.logprobs[1:], atol=1e-4)
