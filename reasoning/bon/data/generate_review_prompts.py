"""Writes `review_prompts/{train,test}.jsonl`: openings of movie reviews for controlled generation (vBoN).

The openings are written for this project (MIT, like the code) from templates: a neutral or mixed start,
never a verdict, so the reward (VADER sentiment of the continuation) depends on what the model writes.
Run once; the JSONL is committed and the split is fixed by the seed.

    python reasoning/bon/data/generate_review_prompts.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TITLES = [
    "The Long Harbor",
    "Midnight Orchard",
    "Paper Satellites",
    "The Ninth Winter",
    "Glass Horizon",
    "A Quiet Engine",
    "Salt and Thunder",
    "The Cartographer",
    "Lanterns in May",
    "Iron Meadow",
    "The Last Ferry",
    "Blue Static",
    "Northern Debt",
    "The Velvet Circuit",
    "Harvest of Ash",
    "Small Gods of Ohio",
    "The Understudy",
    "Crimson Tide Pool",
    "Echo Park Nights",
    "The Glass Menagerie Redux",
]
OPENINGS = [
    "I watched {t} last night and",
    "{t} is a film that",
    "Going into {t}, I expected",
    "The first twenty minutes of {t}",
    "My honest opinion of {t} is that",
    "After seeing {t} twice, I can say",
    "The acting in {t}",
    "The director of {t} clearly",
    "As a fan of the genre, I found {t}",
    "The soundtrack of {t}",
    "By the end of {t}, the audience",
    "{t} tells the story of a family that",
]


def main(seed: int = 0, n_test: int = 48) -> None:
    rows = [{"prompt": o.format(t=t)} for t in TITLES for o in OPENINGS]
    random.Random(seed).shuffle(rows)
    out = Path(__file__).parent / "review_prompts"
    out.mkdir(exist_ok=True)
    for split, part in (("test", rows[:n_test]), ("train", rows[n_test:])):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        print(f"{split}: {len(part)} prompts")


if __name__ == "__main__":
    main()
