"""Verifiable reasoning tasks: question x, thinking trace z, answer y, and the one answer checker.

Two sources of (question, trace, answer) rows, both returned as `datasets.Dataset` with the columns
`question`, `trace` (gold trace, possibly empty) and `answer` (the final answer as a string):

- `chain_task(seed)`: a shipped 3-step arithmetic chain a 135M model learns on CPU in minutes,

      question: "Start at 5, add 3, double it, subtract 4."
      trace:    "5 + 3 = 8\\n8 * 2 = 16\\n16 - 4 = 12"
      answer:   "12"

  with a fixed, disjoint train/test split drawn from `seed`.
- `word_chain`: shipped word problems of 4 operations with a two-operand step and a distractor (about 50
  tokens of working, up to 86 with `Answer: y`, so give it max_new_tokens 96;
  `reasoning/reason/data/generate_word_chain.py` writes them), harder than `chain`.
- `load_jsonl(path)`: a user's JSONL of `{"question", "answer"}` in GSM8K format, where `answer` holds the
  worked solution and the final answer after `####` (the solution becomes the gold trace).

A model's completion is the trace, a newline and `Answer: y` (`format_completion`). `extract_answer` and
`is_correct` are the only places that read an answer out of generated text; every trainer, reward and
evaluation calls them.

Example:
    >>> task = chain_task(seed=0, n_train=4, n_test=2)
    >>> row = task.train[0]
    >>> is_correct(format_completion(row["trace"], row["answer"]), row["answer"])
    True
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from dln.data.jsonl import read_numbered_jsonl
from dln.errors import DLNError

ANSWER_PREFIX = "Answer:"
# The instruction the policy π(z, y | x) sees, and the posterior q(z | x, y)'s hinted version of it.
POLICY_INSTRUCTION = "Solve step by step, one step per line, then write the final line as 'Answer: N'."
HINT_INSTRUCTION = (
    "The answer is {answer}. Write the steps that reach it, one per line, then 'Answer: {answer}'."
)

_STRICT = re.compile(r"(?:Answer:|####)\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>


@dataclass
class ReasoningTask:
    """A named pair of splits, each a `datasets.Dataset` with question, trace and answer columns."""

    name: str
    train: object  # datasets.Dataset
    test: object

    def split(self, name: str):
        if name not in ("train", "test"):
            raise DLNError(f"task {self.name} has no split {name!r}; use train or test")
        return self.train if name == "train" else self.test


# --- answers -------------------------------------------------------------------------------------------


def normalize_number(text: str) -> str:
    """'1,234.50' -> '1234.5', '12.' -> '12', '-0' -> '0'; a non-number is returned stripped."""
    text = text.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    if value == int(value):
        return str(int(value))
    return repr(value)


def extract_answer(text: str, strict: bool = True) -> str | None:
    """The final answer in a completion, normalised; None when there is none.

    Strict mode reads the last `Answer: N` (or GSM8K's `#### N`); lenient mode falls back to the last
    number anywhere in the text (how a base model that never writes `Answer:` is scored leniently).

    Args:
        text: a generated completion.
        strict: only accept an explicit `Answer:` / `####` line.

    Returns:
        The normalised number as a string (see `normalize_number`), or None.
    """
    found = _STRICT.findall(text)
    if found:
        return normalize_number(found[-1])
    if strict:
        return None
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def is_correct(text: str, gold: str, strict: bool = True) -> bool:
    """True when the completion's extracted answer equals the gold answer (both normalised)."""
    answer = extract_answer(text, strict=strict)
    return answer is not None and answer == normalize_number(str(gold))


def format_completion(trace: str, answer: str) -> str:
    """The text a model should produce: the trace z, then the y-part `Answer: y` on its own line."""
    return trace + answer_suffix(trace, answer)


def answer_suffix(trace: str, answer: str) -> str:
    """The y-part appended to a trace z: a newline unless z ends with one, then `Answer: y`."""
    sep = "" if not trace or trace.endswith("\n") else "\n"
    return f"{sep}{ANSWER_PREFIX} {answer}"


def split_trace(text: str) -> str:
    """The trace z of a completion: everything before its first `Answer:` (the whole text if none)."""
    head, sep, _ = text.partition(ANSWER_PREFIX)
    return head if sep else text


def answer_only(rows: list[dict], gold_count: int = -1) -> list[dict]:
    """The semi-supervised split: the first `gold_count` rows keep their gold trace, the rest only their
    answer (trace ""); -1 keeps every trace."""
    if gold_count < 0:
        return rows
    return [r if i < gold_count else {**r, "trace": ""} for i, r in enumerate(rows)]


def policy_prompt(question: str) -> str:
    """The user turn of π(z, y | x) (the chat template is applied by `Policy.encode_prompts`)."""
    return f"{question}\n{POLICY_INSTRUCTION}"


def posterior_prompt(question: str, answer: str) -> str:
    """The user turn of q(z | x, y): the same question with the answer as a hint."""
    return f"{question}\n{HINT_INSTRUCTION.format(answer=answer)}"


# --- the shipped chain task ----------------------------------------------------------------------------


def _chain(rng: random.Random, steps: int) -> tuple[str, str, str]:
    """One chain: start in [1, 20], then `steps` ops among add k, subtract k (never below 0), double."""
    value = rng.randint(1, 20)
    words, lines = [f"Start at {value}"], []
    for _ in range(steps):
        op = rng.choice(("add", "subtract", "double"))
        if op == "double" and value <= 50:
            new, words_op, line = value * 2, "double it", f"{value} * 2 = {value * 2}"
        elif op == "subtract" and value > 1:
            k = rng.randint(1, min(9, value))
            new, words_op, line = value - k, f"subtract {k}", f"{value} - {k} = {value - k}"
        else:
            k = rng.randint(1, 9)
            new, words_op, line = value + k, f"add {k}", f"{value} + {k} = {value + k}"
        words.append(words_op)
        lines.append(line)
        value = new
    return ", ".join(words) + ".", "\n".join(lines), str(value)


def chain_task(seed: int = 0, n_train: int = 2000, n_test: int = 200, steps: int = 3) -> ReasoningTask:
    """The 3-step arithmetic chain with a fixed train/test split: no test question appears in train.

    Args:
        seed: draws the questions and the split; the same seed gives the same rows.
        n_train: training questions.
        n_test: held-out questions.
        steps: operations per chain.

    Returns:
        A `ReasoningTask` named `chain`.
    """
    import datasets

    if n_train < 1 or n_test < 0 or steps < 1:
        raise DLNError(
            f"chain task needs n_train >= 1, n_test >= 0, steps >= 1 (got {n_train}, {n_test}, {steps})"
        )
    rng = random.Random(seed)
    rows: dict[str, dict] = {}
    attempts = 0
    while len(rows) < n_train + n_test:
        question, trace, answer = _chain(rng, steps)
        rows.setdefault(question, {"question": question, "trace": trace, "answer": answer})
        attempts += 1
        if attempts > 50 * (n_train + n_test):
            raise DLNError(f"cannot draw {n_train + n_test} distinct {steps}-step chains; ask for fewer")
    unique = list(rows.values())
    # Test rows first, so the held-out set for a given (seed, n_test) does not change with n_train.
    test, train = unique[:n_test], unique[n_test:]
    return ReasoningTask("chain", datasets.Dataset.from_list(train), datasets.Dataset.from_list(test))


# --- user files ----------------------------------------------------------------------------------------


def load_jsonl(path: str | Path):
    """A GSM8K-format JSONL file as a Dataset of question, trace, answer.

    Each line is `{"question": ..., "answer": "<worked solution> #### <final answer>"}`. The text before
    `####` (calculator annotations `<<...>>` removed) is the gold trace; the text after it the answer. An
    answer without `####` is taken as the final answer itself with an empty trace.

    Raises:
        DLNError: naming the file, the line and the fix, for a missing/empty file, a line that is not a
            JSON object, a missing field, or an empty final answer.
    """
    import datasets

    rows = []
    hint = 'GSM8K format: {"question": ..., "answer": "... #### N"}'
    for number, record in read_numbered_jsonl(str(path), ("question", "answer"), hint):
        solution, sep, final = str(record["answer"]).rpartition("####")
        if not sep:
            solution, final = "", str(record["answer"])
        final = normalize_number(final)
        if not final:
            raise DLNError(f"{path}, line {number}: empty final answer; write it after #### (e.g. '#### 72')")
        trace = _CALCULATOR.sub("", solution).strip()
        rows.append({"question": str(record["question"]), "trace": trace, "answer": final})
    if not rows:
        raise DLNError(f"{path} is empty; it needs one JSON object per line with question and answer")
    return datasets.Dataset.from_list(rows)


def load_task(
    name: str = "chain",
    *,
    train: str | None = None,
    test: str | None = None,
    seed: int = 0,
    n_train: int = 2000,
    n_test: int = 200,
) -> ReasoningTask:
    """The shipped chain task, or user files (`train` and `test` JSONL in GSM8K format) replacing it."""
    if train:
        if not test:
            raise DLNError("a --train file needs a --test file too (held-out accuracy is measured on it)")
        return ReasoningTask(Path(train).stem, load_jsonl(train), load_jsonl(test))
    if name == "word_chain":  # shipped JSONL (reasoning/reason/data/generate_word_chain.py), first N rows
        folder = Path(__file__).resolve().parent / "data" / "word_chain"
        train_rows, test_rows = load_jsonl(folder / "train.jsonl"), load_jsonl(folder / "test.jsonl")
        return ReasoningTask(
            name,
            train_rows.select(range(min(n_train, len(train_rows)))),
            test_rows.select(range(min(n_test, len(test_rows)))),
        )
    if name != "chain":
        raise DLNError(
            f"unknown reasoning task {name!r}; the shipped tasks are 'chain' and 'word_chain', or give "
            "--train/--test"
        )
    return chain_task(seed=seed, n_train=n_train, n_test=n_test)


def task_of(config) -> ReasoningTask:
    """The task a run config names (its `task`, `train`, `test`, `task_seed`, `n_train`, `n_test` keys)."""
    return load_task(
        config.task,
        train=config.train,
        test=config.test,
        seed=config.task_seed,
        n_train=config.n_train,
        n_test=config.n_test,
    )
