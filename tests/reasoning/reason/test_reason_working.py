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
