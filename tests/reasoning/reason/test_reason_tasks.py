"""Answer extraction and checking, the chain task's split, GSM8K JSONL loading, and config errors."""

from __future__ import annotations

import json

import pytest

from dln.cli import main
from dln.errors import DLNError
from reasoning.reason.config import ReasonConfig
from reasoning.reason.tasks import (
    answer_suffix,
    chain_task,
    extract_answer,
    format_completion,
    is_correct,
    load_jsonl,
    load_task,
    normalize_number,
    split_trace,
)


@pytest.mark.parametrize(
    "text, strict, expected",
    [
        ("5 + 3 = 8\n8 * 2 = 16\nAnswer: 16", True, "16"),
        ("Answer: 3\nAnswer: 12.", True, "12"),  # the last answer line counts
        ("answer:   -4", True, "-4"),
        ("so the total is #### 1,234", True, "1234"),
        ("Answer: $7.50", True, "7.5"),
        ("I think it is 42", True, None),  # strict needs an Answer line
        ("I think it is 42, not 41", False, "41"),  # lenient: the last number
        ("no number here", False, None),
    ],
)
def test_extract_answer(text, strict, expected):
    assert extract_answer(text, strict=strict) == expected


def test_is_correct_normalises_numbers():
    assert is_correct("Answer: 12.0", "12")
    assert is_correct("Answer: 1,000", "1000")
    assert not is_correct("Answer: 13", "12")
    assert not is_correct("12", "12")  # no Answer line
    assert is_correct("12", "12", strict=False)
    assert normalize_number(" 3. ") == "3" and normalize_number("abc") == "abc"


def test_chain_task_is_deterministic_disjoint_and_checkable():
    a, b = chain_task(seed=1, n_train=300, n_test=50), chain_task(seed=1, n_train=300, n_test=50)
    assert list(a.train) == list(b.train) and list(a.test) == list(b.test)
    assert not set(a.train["question"]) & set(a.test["question"])
    assert list(chain_task(seed=1, n_train=100, n_test=50).test) == list(a.test)  # test set fixed by seed
    assert list(chain_task(seed=2, n_train=300, n_test=50).test) != list(a.test)
    for row in list(a.train)[:50]:
        completion = format_completion(row["trace"], row["answer"])
        assert is_correct(completion, row["answer"])
        assert split_trace(completion) == row["trace"] + "\n"
        # the trace really computes the answer, one step per line
        value = int(row["question"].split()[2].rstrip(","))
        for line in row["trace"].splitlines():
            expr, result = line.split(" = ")
            assert eval(expr.replace(str(value), str(value), 1)) == int(result)  # noqa: S307
            value = int(result)
        assert str(value) == row["answer"]
    assert answer_suffix("", "3") == "Answer: 3" and answer_suffix("x\n", "3") == "Answer: 3"


def test_load_gsm8k_jsonl(tmp_path):
    path = tmp_path / "gsm.jsonl"
    rows = [
        {"question": "Natalia sold 48 clips ...", "answer": "She sold 48/2 = <<48/2=24>>24 more.\n#### 72"},
        {"question": "Two plus two?", "answer": "4"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    data = load_jsonl(path)
    assert data["answer"] == ["72", "4"]
    assert data[0]["trace"] == "She sold 48/2 = 24 more."
    task = load_task(train=str(path), test=str(path))
    assert task.name == "gsm" and len(task.test) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ('{"question": "q", "answer": "#### 3"}\nnot json\n', "line 2: not valid JSON"),
        ('{"question": "q"}\n', r"line 1: missing field\(s\) answer"),
        ('{"question": "q", "answer": "work ####  "}\n', "line 1: empty final answer"),
    ],
)
def test_bad_jsonl_names_file_line_and_fix(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DLNError, match=message) as err:
        load_jsonl(path)
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_task():
    with pytest.raises(DLNError, match="does not exist"):
        load_jsonl("nowhere.jsonl")
    with pytest.raises(DLNError, match="unknown reasoning task"):
        load_task("gsm9k")
    with pytest.raises(DLNError, match="--test"):
        load_task(train="x.jsonl")


def test_config_errors():
    with pytest.raises(DLNError, match="objective must be one of"):
        ReasonConfig(objective="ppo")
    with pytest.raises(DLNError, match="k >= 2|K >= 2"):
        ReasonConfig(objective="grpo", k=1)
    assert ReasonConfig(objective="forward_kl").posterior_update == "forward_kl"
    assert ReasonConfig(objective="iwae").posterior_update == "reverse_kl"
    assert ReasonConfig(objective="sft").warmup == 0


def test_cli_bad_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: elbo\nstepz: 3\n", encoding="utf-8")
    assert main(["reason", "train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) stepz" in err and "steps" in err
    assert main(["reason", "train", "--objective", "elbo", "--k", "two", "--out", str(tmp_path / "r")]) == 2
    assert "k: expected an integer" in capsys.readouterr().err
    assert main(["reason", "eval", "--run", str(tmp_path / "none")]) == 2
    assert "not a reasoning run" in capsys.readouterr().err


def test_word_chain_is_shipped_deterministic_and_disjoint(tmp_path, monkeypatch):
    """The committed JSONL is what the committed script writes; no test question is in train; every gold
    working line is arithmetic that holds and ends at the answer."""
    import importlib.util
    import re
    from pathlib import Path

    from reasoning.reason.tasks import load_task

    script = Path(__file__).resolve().parents[3] / "reasoning" / "reason" / "data" / "generate_word_chain.py"
    spec = importlib.util.spec_from_file_location("generate_word_chain", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "__file__", str(tmp_path / "generate_word_chain.py"))
    module.main()
    for split in ("train", "test"):
        shipped = (script.parent / "word_chain" / f"{split}.jsonl").read_text()
        assert (tmp_path / "word_chain" / f"{split}.jsonl").read_text() == shipped
    task = load_task("word_chain", n_train=2000, n_test=300)
    assert len(task.train) == 2000 and len(task.test) == 300
    assert not set(task.train["question"]) & set(task.test["question"])
    for row in list(task.train)[:200]:
        lines = row["trace"].splitlines()
        assert len(lines) >= 4
        for line in lines:
            a, op, b, result = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", line).groups()
            assert eval(f"{a} {op} {b}") == int(result)
        assert lines[-1].endswith(f"= {row['answer']}")
    small = load_task("word_chain", n_train=5, n_test=3)
    assert list(small.train) == list(task.train)[:5] and len(small.test) == 3


def test_gold_count_keeps_gold_traces_for_the_first_questions_only(tmp_path):
    """The semi-supervised split, for the chain task and for a user's GSM8K JSONL; SFT refuses a split
    with no gold trace left, naming the key."""

    from reasoning.reason.tasks import answer_only, load_jsonl
    from reasoning.reason.trainer import ReasonTrainer

    path = tmp_path / "train.jsonl"
    lines = [{"question": f"q{i}", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    for rows in (list(load_jsonl(path)), list(chain_task(seed=0, n_train=4, n_test=1).train)):
        semi = answer_only(rows, 1)
        assert semi[0] == rows[0] and all(r["trace"] == "" for r in semi[1:])
        assert [r["answer"] for r in semi] == [r["answer"] for r in rows]  # answers stay
        assert answer_only(rows, -1) == rows
    with pytest.raises(DLNError, match="gold_count"):
        ReasonTrainer(ReasonConfig(objective="sft", gold_count=0, n_train=4, n_test=1), tmp_path / "run")
    with pytest.raises(DLNError, match="gold_count must be"):
        ReasonConfig(gold_count=-2)


def test_warn_if_truncating_counts_gold_completions_longer_than_the_budget(caplog):
    """Char tokens: "1 + 2 = 3\nAnswer: 3" is 9 characters, "\n", the Answer token, ": 3", then EOS;
    an answer-only row (no trace) is not counted."""
    from reasoning.reason.completions import CompletionIds
    from tests.reasoning.reason.fakes import CharTokenizer

    ids = CompletionIds(CharTokenizer())
    rows = [
        {"trace": "1 + 2 = 3", "answer": "3"},
        {"trace": "10 + 20 = 30", "answer": "30"},
        {"trace": "", "answer": "7"},
    ]
    short, long = 9 + 1 + 1 + 3 + 1, 12 + 1 + 1 + 4 + 1
    assert ids.gold_lengths(rows) == [short, long]
    with caplog.at_level("WARNING"):
        assert ids.warn_if_truncating(rows, long) == 0.0
        assert not caplog.records
        assert ids.warn_if_truncating(rows, short) == 0.5
    assert f"at least {long}" in caplog.text and "1 of 2 gold completions" in caplog.text
