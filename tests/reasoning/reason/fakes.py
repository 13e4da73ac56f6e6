"""A fake policy of known densities for estimator units: characters are tokens, and under each adapter
every token is drawn from one fixed categorical, p(t) = softmax(table[adapter])[t], whatever the context.

So log p(completion | prompt) = Σ_chars log_softmax(table)[char] is known by hand (`char_logprob`), and the
tables are leaves with gradients. `sample` returns scripted completions (`script(prompt_text, n)`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from reasoning.reason.completions import CompletionIds

VOCAB = 128
EOS = 0
ANSWER = 1  # the one token whose text contains "Answer" (`CompletionIds.answer_token_ids`)


class CharTokenizer:
    eos_token_id = EOS
    pad_token_id = EOS

    def get_vocab(self) -> dict[str, int]:
        return {"Answer": ANSWER, **{chr(i): i for i in range(2, VOCAB)}}

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text.replace("Answer", "\x01")]

    def __call__(self, text: str, add_special_tokens: bool = False):
        class Encoded:
            input_ids = self.encode(text)

        return Encoded()

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join("Answer" if i == ANSWER else chr(i) for i in ids if i != EOS).replace("\x01", "")


class FakePolicy:
    """The surface of `reasoning.finetune.policy.Policy` the objectives and the recipe use."""

    def __init__(self, adapters, script=None, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.tables = {
            a: torch.randn(VOCAB, generator=g, dtype=torch.float64).requires_grad_() for a in adapters
        }
        self.adapters, self.active = tuple(adapters), adapters[0]
        self.tokenizer, self.script, self.device = CharTokenizer(), script, torch.device("cpu")
        self.sample_calls: list[dict] = []

    def log_table(self, adapter: str, temperature: float = 1.0) -> torch.Tensor:
        return torch.log_softmax(self.tables[adapter] / temperature, 0)

    def char_logprob(self, adapter: str, text_or_ids, temperature: float = 1.0) -> float:
        """By hand: Σ over the tokens of the text (or ids) of log p(token) under `adapter`."""
        ids = self.tokenizer.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
        table = self.log_table(adapter, temperature).detach()
        return float(sum(table[i] for i in ids))

    @contextmanager
    def use(self, name):
        previous, self.active = self.active, name
        try:
            yield
        finally:
            self.active = previous

    def parameters(self, name: str):
        return [self.tables[name]]

    def encode_prompts(self, texts, chat: bool = True):
        return [self.tokenizer.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def logprobs(self, prompt_ids, completion_ids, per_token=False, exact=False, temperature=1.0, top_p=1.0):
        if top_p < 1.0:
            raise NotImplementedError("the fake has no nucleus")
        table = self.log_table(self.active, temperature)
        width = max(1, max(len(c) for c in completion_ids))
        token_logp = torch.zeros(len(completion_ids), width, dtype=torch.float64)
        mask = torch.zeros(len(completion_ids), width, dtype=torch.float64)
        for i, c in enumerate(completion_ids):
            if c:
                token_logp[i, : len(c)] = table[torch.tensor(c)]
                mask[i, : len(c)] = 1.0
        return (token_logp, mask) if per_token else token_logp.sum(-1)

    def sample(
        self, prompt_ids, n=1, max_new_tokens=48, temperature=1.0, top_p=1.0, seed=None, batch_size=32
    ):
        self.sample_calls.append(
            {"adapter": self.active, "temperature": temperature, "n": n, "prompts": len(prompt_ids)}
        )
        return [
            [self.tokenizer.encode(text) + [EOS] for text in self.script(self.decode(p), n)]
            for p in prompt_ids
        ]


class FakeTrainer:
    """The surface of `ReasonTrainer` an objective's step uses: fixed rows, seed 0, the fake's log-probs."""

    def __init__(self, config, policy, rows):
        self.config, self.policy, self._rows = config, policy, rows
        self.ids = CompletionIds(policy.tokenizer)
        self.continuation, self.cut_trace = self.ids.continuation, self.ids.cut_trace

    def rows(self, micro, pool=None):
        return self._rows

    def sample_seed(self, micro):
        return 0

    def logprob(self, prompts, completions):
        self.scored_prompts = [self.policy.decode(p) for p in prompts]
        return self.policy.logprobs(prompts, completions)
