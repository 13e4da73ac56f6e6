"""Prompt -> text -> token ids, the one rule every local backend (`hf:`, `vllm:`) follows.

Both backends feed the model token ids they computed here, never text, so that a prompt, a label and their
log-probs are the same whichever engine runs them. The rule (see `dln.lm.base` for why):

- a chat prompt goes through the tokenizer's chat template with the generation prompt appended; the template
  writes any BOS it wants, so no special tokens are added on top;
- a raw string is used as is and gets the tokenizer's own special tokens (e.g. a BOS);
- an empty context becomes one BOS (or EOS) token, a position to predict the first token from;
- a continuation is tokenised on its own without special tokens, and its ids are appended to the context's.
"""

from __future__ import annotations

from dln.errors import DLNError
from dln.lm.base import Prompt


def check_messages(messages: list) -> None:
    """Raise unless `messages` is a list of `{"role": ..., "content": ...}` dicts."""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DLNError(
                f"a chat prompt is a list of {{'role': ..., 'content': ...}} dicts, got {message!r}"
            )


def render_prompt(tokenizer, prompt: Prompt, uri: str = "this model") -> str:
    """A chat prompt becomes the templated text ending with the assistant's turn; a string stays as is.

    Args:
        tokenizer: a transformers tokenizer.
        prompt: a raw string or a list of chat messages.
        uri: names the model in the error raised when it has no chat template.
    """
    if isinstance(prompt, str):
        return prompt
    check_messages(prompt)
    if tokenizer.chat_template is None:
        raise DLNError(f"{uri} has no chat template; pass raw string prompts instead of messages")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, prompt: Prompt, uri: str = "this model") -> list[int]:
    """The token ids of a prompt (context), never empty."""
    # A chat template already writes any BOS it wants; a raw string gets the tokenizer's own.
    text = render_prompt(tokenizer, prompt, uri)
    ids = tokenizer(text, add_special_tokens=isinstance(prompt, str)).input_ids
    if not ids:  # an empty context still needs a position to predict the first token from
        ids = [tokenizer.bos_token_id or tokenizer.eos_token_id]
    return ids


def encode_continuation(tokenizer, text: str) -> list[int]:
    """The token ids of a continuation, tokenised on its own (no special tokens)."""
    return tokenizer(text, add_special_tokens=False).input_ids


def context_key(tokenizer, prompt: Prompt, uri: str = "this model") -> str:
    """A hashable key equal for two prompts exactly when they encode to the same context ids."""
    return "\0raw" + prompt if isinstance(prompt, str) else render_prompt(tokenizer, prompt, uri)


class TokenizedPrompts:
    """`render`, `encode_prompt`, `encode_continuation` for a backend that has `tokenizer` and `uri`."""

    tokenizer: object
    uri: str

    def render(self, prompt: Prompt) -> str:
        """A chat prompt becomes the templated text ending with the assistant's turn."""
        return render_prompt(self.tokenizer, prompt, self.uri)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.uri)

    def encode_continuation(self, text: str) -> list[int]:
        return encode_continuation(self.tokenizer, text)
