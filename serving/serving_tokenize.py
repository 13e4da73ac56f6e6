"""`/tokenize` and `/detokenize`, in vLLM's request and response shapes.

`POST /tokenize` takes `{"prompt": str}` (the tokenizer's special tokens added unless
`add_special_tokens: false`, the rule a completion prompt follows) or `{"messages": [...]}` (the chat
template, with the assistant's turn appended unless `add_generation_prompt: false`), and returns `{"count",
"max_model_len", "tokens", "token_strs"}` (`token_strs` with `return_token_strs: true`: the tokenizer's own
token strings, e.g. `"Ġcat"`). `POST /detokenize` takes `{"tokens": [...]}` and returns `{"prompt": str}`.
`model` is optional; when given it must be a served name (404 otherwise).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Discriminator, Field, Tag

from serving.errors import BadRequestError
from serving.protocol import ChatMessage, OpenAIBaseModel, RequestModel, Text, TokenId


class TokenizeCompletionRequest(RequestModel):
    model: Text | None = None
    prompt: Text
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(RequestModel):
    model: Text | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    return_token_strs: bool = False


class TokenizeResponse(OpenAIBaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


def _kind(body) -> str:
    return "TokenizeChat" if isinstance(body, dict) and "messages" in body else "TokenizeCompletion"


#: a body with `messages` is a chat request, any other a prompt (so an error names the right field)
TokenizeRequest = Annotated[
    Annotated[TokenizeCompletionRequest, Tag("TokenizeCompletion")]
    | Annotated[TokenizeChatRequest, Tag("TokenizeChat")],
    Discriminator(_kind),
]


class DetokenizeRequest(RequestModel):
    model: Text | None = None
    tokens: list[TokenId]


class DetokenizeResponse(OpenAIBaseModel):
    prompt: str


class TokenizeServing:
    def __init__(self, tokenizer, models, max_model_len: int) -> None:
        self.tokenizer, self.models, self.max_model_len = tokenizer, models, max_model_len

    def tokenize(self, request: TokenizeCompletionRequest | TokenizeChatRequest) -> TokenizeResponse:
        if request.model is not None:
            self.models.resolve(request.model)  # 404 for an unknown name
        if isinstance(request, TokenizeChatRequest):
            if self.tokenizer.chat_template is None:
                raise BadRequestError("this model has no chat template: tokenize a prompt", param="messages")
            messages = [{"role": m.role, "content": m.text()} for m in request.messages]
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=request.add_generation_prompt
            )
        else:
            text = request.prompt
        ids = list(self.tokenizer(text, add_special_tokens=request.add_special_tokens).input_ids)
        strs = self.tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        return TokenizeResponse(count=len(ids), max_model_len=self.max_model_len, tokens=ids, token_strs=strs)

    def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        if request.model is not None:
            self.models.resolve(request.model)
        vocab = len(self.tokenizer)
        if any(t >= vocab for t in request.tokens):
            raise BadRequestError(f"token ids must lie in [0, {vocab})", param="tokens")
        return DetokenizeResponse(prompt=self.tokenizer.decode(request.tokens))
