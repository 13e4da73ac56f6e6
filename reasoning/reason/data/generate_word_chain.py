"""Writes `word_chain/{train,test}.jsonl`: arithmetic word problems, the shipped task harder than `chain`.

Each problem is a short story of 4 operations on one quantity, among them a two-operand step ("buys 3 bags
of 4") that takes two lines of working, with one distractor sentence (a number that must be ignored):

    question: "Mia has 7 apples. She buys 3 bags with 4 apples each. Her brother has 9 pears. She gives
               away 5 apples. She doubles her apples. How many apples does Mia have now?"
    answer:   "3 * 4 = 12\\n7 + 12 = 19\\n19 - 5 = 14\\n14 * 2 = 28\\n#### 28"      (GSM8K format)

The templates are written for this project (MIT, like the code). Run once; the JSONL is committed, and the
questions and the split are fixed by the seed (test questions never appear in train):

    python reasoning/reason/data/generate_word_chain.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Ines", "Kai", "Lena", "Ravi", "Sara", "Tom"]
PRONOUN = {n: ("She" if n in {"Mia", "Ava", "Zoe", "Ines", "Lena", "Sara"} else "He") for n in NAMES}
ITEMS = ["apples", "marbles", "stickers", "coins", "cards", "shells", "stamps", "beads"]
OTHERS = ["brother", "sister", "friend", "neighbour", "cousin"]
N_TRAIN, N_TEST, SEED = 2000, 300, 0


def _step(rng: random.Random, value: int, item: str, he: str) -> tuple[int, str, list[str]]:
    """One operation on `value`: (new value, its sentence, its lines of working)."""
    op = rng.choice(("bags", "bags", "give", "get", "double", "half"))
    if op == "bags":
        n, m = rng.randint(2, 5), rng.randint(2, 6)
        return (
            value + n * m,
            f"{he} buys {n} bags with {m} {item} each.",
            [f"{n} * {m} = {n * m}", f"{value} + {n * m} = {value + n * m}"],
        )
    if op == "give" and value > 2:
        k = rng.randint(2, min(9, value - 1))
        return value - k, f"{he} gives away {k} {item}.", [f"{value} - {k} = {value - k}"]
    if op == "double" and value <= 60:
        return (
            value * 2,
            f"{he} doubles {'her' if he == 'She' else 'his'} {item}.",
            [f"{value} * 2 = {value * 2}"],
        )
    if op == "half" and value % 2 == 0 and value >= 4:
        return value // 2, f"{he} gives half of them to a friend.", [f"{value} / 2 = {value // 2}"]
    k = rng.randint(2, 9)
    return value + k, f"{he} finds {k} more {item}.", [f"{value} + {k} = {value + k}"]


def problem(rng: random.Random, steps: int = 4) -> dict:
    """One word problem with its gold working and answer, as a GSM8K-format record."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    he = PRONOUN[name]
    value = rng.randint(2, 15)
    sentences, lines = [f"{name} has {value} {item}."], []
    for _ in range(steps):
        value, sentence, working = _step(rng, value, item, he)
        sentences.append(sentence)
        lines.extend(working)
    other = rng.choice([i for i in ITEMS if i != item])
    distractor = f"{name}'s {rng.choice(OTHERS)} has {rng.randint(2, 20)} {other}."
    sentences.insert(rng.randint(1, len(sentences)), distractor)
    question = " ".join(sentences) + f" How many {item} does {name} have now?"
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {value}"}


def main() -> None:
    out = Path(__file__).resolve().parent / "word_chain"
    rng = random.Random(SEED)
    rows: dict[str, dict] = {}
    while len(rows) < N_TRAIN + N_TEST:
        record = problem(rng)
        rows.setdefault(record["question"], record)
    unique = list(rows.values())
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("test", unique[:N_TEST]), ("train", unique[N_TEST:])):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in split)


if __name__ == "__main__":
    main()
