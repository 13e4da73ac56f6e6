"""The backward LLM: propose rewrites of a prompt from a minibatch's successes and errors.

As in the DLN paper, each candidate is asked for with one of four rotating meta-instructions (clarify, add
examples, shorten, add detail), so the N-1 proposals explore different directions; the current prompt is
always kept as a candidate by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dln.layers import compile_template
from dln.lm.base import LanguageModel

META_INSTRUCTIONS = {
    "clarify": "Rewrite the instruction so that it is clearer and says exactly which output to give.",
    "examples": "Rewrite the instruction and add two short examples of inputs with their correct outputs.",
    "shorten": "Rewrite the instruction so that it is shorter and simpler.",
    "detail": "Rewrite the instruction with more detail about how to decide on the output.",
}

BACKWARD_TEMPLATE = """A student answers inputs by following an instruction. Improve the instruction so \
that the student gives the correct output.

Current instruction: {{ prompt }}

{% if labels %}The possible outputs are: {{ labels | join(", ") }}.
{% endif %}{% if successes %}
The student answered these correctly:
{% for ex in successes %}Input: {{ ex.input }}
Correct output: {{ ex.target }}
{% endfor %}{% endif %}{% if errors %}
The student got these wrong:
{% for ex in errors %}Input: {{ ex.input }}
Student output: {{ ex.output }}
Correct output: {{ ex.target }}
{% endfor %}{% endif %}
{{ meta_instruction }} Reply with the new instruction only."""


@dataclass(frozen=True)
class Example:
    input: str
    target: str
    output: str = ""


def meta_instruction(index: int) -> str:
    names = list(META_INSTRUCTIONS)
    return META_INSTRUCTIONS[names[index % len(names)]]


def propose_prompts(
    model: LanguageModel,
    prompt: str,
    successes: Sequence[Example],
    errors: Sequence[Example],
    labels: Sequence[str],
    *,
    num: int,
    temperature: float,
    max_tokens: int,
    seed: int,
) -> list[str]:
    """`num` distinct rewrites of `prompt` (fewer if the model repeats itself or writes nothing).

    The "add examples" move copies minibatch examples (errors first) verbatim under the current prompt instead
    of asking the model: a small backward model garbles copied examples, and verbatim ones are what that
    meta-instruction asks for. The other moves are sampled from the backward model.
    """
    if num <= 0:
        return []
    moves = [meta_instruction(i) for i in range(num)]
    template = compile_template(BACKWARD_TEMPLATE)
    asked = [i for i, move in enumerate(moves) if move != META_INSTRUCTIONS["examples"]]
    requests = [
        [
            {
                "role": "user",
                "content": template.render(
                    prompt=prompt,
                    successes=successes,
                    errors=errors,
                    labels=labels,
                    meta_instruction=moves[i],
                ),
            }
        ]
        for i in asked
    ]
    outputs = model.generate(requests, n=1, temperature=temperature, max_tokens=max_tokens, seed=seed)
    proposals = dict(zip(asked, (clean_prompt(o[0]) for o in outputs)))
    shown = [*errors, *successes]
    for rank, i in enumerate(i for i in range(num) if i not in proposals):
        proposals[i] = with_examples(prompt, shown[2 * rank :] + shown[: 2 * rank], per_label=1 + rank % 2)
    ordered = [proposals[i] for i in range(num)]
    return [p for p in dict.fromkeys(ordered) if p and p != prompt]


def with_examples(prompt: str, examples: Sequence[Example], per_label: int | None = None) -> str:
    """The prompt followed by the gold examples (at most `per_label` of each label), in the order given."""
    taken: dict[str, int] = {}
    lines = []
    for example in examples:
        if per_label is None or taken.get(example.target, 0) < per_label:
            taken[example.target] = taken.get(example.target, 0) + 1
            lines.append(f"Input: {example.input}\nOutput: {example.target}")
    return f"{prompt}\n\nExamples:\n" + "\n\n".join(lines) if lines else prompt


def clean_prompt(text: str) -> str:
    """Strip what chat models wrap around an answer: a label line, quotes, markdown quote marks."""
    text = text.strip()
    text = re.sub(r"^(new |improved |revised )?instruction\s*:\s*", "", text, flags=re.IGNORECASE)
    text = "\n".join(line.lstrip("> ").rstrip() for line in text.splitlines()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text
