"""Generate the shipped toy tasks `topic` and `sentiment` (`dln/data/tasks/<task>/{train,dev,test}.jsonl`).

Templated sentences from small vocabularies, drawn with `random.Random(42)`, so that a rerun writes the same
files. The label words are plain words that the task's initial prompt need not mention: `topic` labels a
sentence sports/food/tech/weather, `sentiment` labels a review good/bad. The test accuracy of
SmolLM2-135M-Instruct moves by 0.4 to 0.5 with the prompt alone, so prompt training has room to show. Code
words (e.g. colours for topics) were tried and dropped: that model stays at chance with them whatever the
prompt, instruction or few-shot. A maintenance script: the package never imports it at run time.

Example:
    python dln/data/generate_toy_tasks.py            # rewrites dln/data/tasks/{topic,sentiment}
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

SEED = 42
SIZES = {"train": 200, "dev": 60, "test": 100}  # divisible by the number of labels: every split is balanced

# --- topic: "<someone> <did something> <when>." about one of four topics ---
PEOPLE = [
    "My brother",
    "The whole office",
    "Our neighbour",
    "Grandma",
    "A friend of mine",
    "The new intern",
    "Half the town",
    "My sister",
    "The kids next door",
    "Our teacher",
]
WHEN = [
    "yesterday",
    "last weekend",
    "this morning",
    "on Friday night",
    "after work",
    "during the holidays",
    "for the first time",
    "again today",
]
TOPICS = {  # label word -> what people did
    "sports": [
        "watched the striker score twice in the final",
        "cheered when the goalkeeper saved a penalty",
        "ran the city marathon",
        "lost a tennis match in three sets",
        "joined the basketball team",
        "practised free throws for an hour",
        "argued about the league table",
        "bought tickets for the cup final",
        "trained with the cycling club",
        "swam forty laps at the pool",
        "coached the junior football side",
        "celebrated the championship win",
    ],
    "food": [
        "baked a loaf of sourdough bread",
        "tried the new ramen place downtown",
        "cooked a spicy lentil curry",
        "ordered a pizza with extra cheese",
        "made pancakes with blueberries",
        "grilled salmon for dinner",
        "shared a huge bowl of pasta",
        "picked strawberries for a pie",
        "learned to fold dumplings",
        "ate far too much chocolate cake",
        "roasted vegetables with garlic",
        "made a pot of tomato soup",
    ],
    "tech": [
        "installed the latest phone update",
        "built a small website in Python",
        "replaced the laptop battery",
        "set up a new wifi router",
        "tested a smartwatch app",
        "fixed a bug in the database code",
        "bought a faster graphics card",
        "backed up every photo to the cloud",
        "upgraded the computer's memory",
        "wrote a script that sorts emails",
        "tried a virtual reality headset",
        "reset the tablet's password",
    ],
    "weather": [
        "got soaked in a sudden thunderstorm",
        "shovelled snow off the driveway",
        "watched thick fog roll over the hills",
        "stayed indoors because of the heatwave",
        "saw hail bounce off the car",
        "checked the forecast for gale-force winds",
        "enjoyed the first sunny day in weeks",
        "heard heavy rain on the roof",
        "saw a rainbow after the storm",
        "scraped frost off the windscreen",
        "felt the temperature drop below freezing",
        "watched lightning flash over the lake",
    ],
}

# --- sentiment: "<opener> <product> <verdict>." ---
OPENERS = [
    "",
    "Honestly, ",
    "After a month, ",
    "In short, ",
    "Overall, ",
    "I have to say ",
    "To be fair, ",
    "So far, ",
]
PRODUCTS = [
    "this blender",
    "the hotel room",
    "these headphones",
    "the pasta here",
    "this novel",
    "the delivery service",
    "this vacuum cleaner",
    "the hiking boots",
    "this phone case",
    "the support team",
    "this coffee maker",
    "the concert",
]
VERDICTS = {  # label word -> verdict
    "good": [
        "exceeded my expectations",
        "was worth every penny",
        "works perfectly",
        "made my week",
        "is exactly what I needed",
        "is the best thing I bought this year",
        "arrived early and looks great",
        "deserves five stars",
        "made me very happy",
        "is a delight",
    ],
    "bad": [
        "was a complete waste of money",
        "fell apart within a week",
        "stopped working after two days",
        "left me disappointed",
        "is the worst thing I bought this year",
        "arrived late and damaged",
        "deserves zero stars",
        "made me very angry",
        "is a disaster",
        "was far worse than advertised",
    ],
}

LABELS = {"topic": list(TOPICS), "sentiment": list(VERDICTS)}


def topic_sentences(label: str) -> list[str]:
    return [f"{who} {what} {when}." for who, what, when in itertools.product(PEOPLE, TOPICS[label], WHEN)]


def sentiment_sentences(label: str) -> list[str]:
    sentences = []
    for opener, product, verdict in itertools.product(OPENERS, PRODUCTS, VERDICTS[label]):
        sentence = f"{opener}{product} {verdict}."
        sentences.append(sentence[0].upper() + sentence[1:])
    return sentences


def build(task: str, rng: random.Random) -> dict[str, list[dict]]:
    """Balanced splits: each label gets SIZES[split] / n_labels distinct sentences in every split."""
    sentences_of = {"topic": topic_sentences, "sentiment": sentiment_sentences}[task]
    labels = LABELS[task]
    splits: dict[str, list[dict]] = {split: [] for split in SIZES}
    for label in labels:
        pool = rng.sample(
            sentences_of(label), sum(SIZES.values()) // len(labels)
        )  # distinct: no cross-split copy
        for split, size in SIZES.items():
            n = size // len(labels)
            splits[split] += [{"input": s, "target": label, "labels": labels} for s in pool[:n]]
            pool = pool[n:]
    for examples in splits.values():
        rng.shuffle(examples)
    return splits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "tasks",
        help="the tasks folder to write into (default: the package's dln/data/tasks)",
    )
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    for task in LABELS:
        for split, examples in build(task, rng).items():
            path = args.out / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8"
            )
        print(f"{task}: " + ", ".join(f"{split} {size}" for split, size in SIZES.items()))


if __name__ == "__main__":
    main()
