"""The wire format: pydantic models of OpenAI's completions, chat completions, models and error objects.

Requests accept the fields of OpenAI's API; fields this server does not use (`presence_penalty`, `user`,
`logit_bias`, ...) are accepted and ignored, as vLLM's server does, so that clients written for either keep
working. Range checks live on the fields, so a bad value becomes a 400 naming the field (see `errors`).

Requests are validated strictly (a number sent as a string, or 1 as a boolean, is a 400, as the OpenAPI
document says), every text field must be valid Unicode (a lone UTF-16 surrogate such as `"\\udfff"` is a 400
naming the field: no tokenizer can encode it), a seed must fit in 64 bits, and `stop` is capped at
`MAX_STOP` strings of at most `MAX_STOP_LENGTH` characters (each stop string costs work at every step).

Extension fields (not in OpenAI's API): `reward` and `structured_outputs` on requests (a registered reward
for Best-of-N; `{"choice": [...]}`, vLLM's name, for choice decoding), and `reward` / `rewards` /
`choice_logprobs` on the returned choices.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_serializer

#: the most top log-probs a request may ask for per token (Microsoft's DLN code asks for 100).
MAX_LOGPROBS = 100
#: the most completions one request may ask for (n and best_of).
MAX_N = 128
#: the most stop strings per request, and the longest one (OpenAI allows 4; vLLM sets no limit).
MAX_STOP = 8
MAX_STOP_LENGTH = 128
#: the most choices of one `structured_outputs.choice` request (each is scored).
MAX_CHOICES = 64
#: a seed is a 64-bit signed integer (torch's generators and vLLM's take no more).
INT64 = (-(2**63), 2**63 - 1)


def valid_unicode(text: str) -> str:
    """Reject a lone UTF-16 surrogate (JSON allows `"\\udfff"`, UTF-8 and every tokenizer do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"the text is not valid Unicode: a lone UTF-16 surrogate ({text[err.start]!r}) at character "
            f"{err.start}"
        ) from None
    return text


def integral(value):
    """3.0 is the integer 3, as JSON Schema says; 3.5, "3" and true are still refused (strict)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: a string field whose text reaches the tokenizer
Text = Annotated[str, AfterValidator(valid_unicode)]
StopString = Annotated[Text, Field(max_length=MAX_STOP_LENGTH)]


def Int(**bounds) -> type:  # noqa: N802 (a type)
    """An integer field of a request with its bounds (`ge`, `le`): strict, but an integral float such as
    3.0 is that integer. (The bounds go inside, before the validator, so the JSON schema shows them.)"""
    return Annotated[int, Field(**bounds), BeforeValidator(integral)]


TokenId = Int(ge=0)


class OpenAIBaseModel(BaseModel):
    # Unknown request fields are ignored rather than rejected (vLLM's behaviour); extra response fields
    # (the Best-of-N extensions) are serialised.
    model_config = ConfigDict(extra="allow")


class RequestModel(OpenAIBaseModel):
    # Strict: the body's types are the OpenAPI document's types ("1" is not a number, 1 is not true).
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(RequestModel):
    include_usage: bool = False


class StructuredOutputs(RequestModel):
    """vLLM's `structured_outputs`; only `choice` is supported: the answer is one of these strings."""

    choice: list[Text] = Field(min_length=1, max_length=MAX_CHOICES)


class SamplingFields(RequestModel):
    """The fields completions and chat completions share."""

    model: Text
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: Int(ge=1, le=MAX_N) = 1
    best_of: Int(ge=1, le=MAX_N) | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    seed: Int(ge=INT64[0], le=INT64[1]) | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    reward: Text | None = Field(None, description="extension: a registered reward ranks the n samples")
    structured_outputs: StructuredOutputs | None = Field(
        None,
        description='extension (vLLM\'s name): {"choice": [...]} answers with the most probable choice, '
        "each scored exactly as a continuation of the prompt",
    )

    def stop_strings(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stop if s)


class CompletionRequest(SamplingFields):
    prompt: (
        Text
        | Annotated[list[Text], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: Int(ge=0) = 16
    logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = None
    echo: bool = False


class TextPart(RequestModel):
    type: Literal["text"]
    text: Text


class ChatMessage(RequestModel):
    """A message; `content` is required, a string or a list of text parts (no tool calls are served, so
    an assistant message has content too)."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int(ge=0) | None = None
    max_completion_tokens: Int(ge=0) | None = None
    logprobs: bool = False
    top_logprobs: Int(ge=0, le=MAX_LOGPROBS) | None = None


# -- responses ---------------------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(OpenAIBaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] = Field(default_factory=list)


def declare_choice_extensions(schema: dict) -> None:
    """The extension fields a choice may carry, declared in the OpenAPI document (they are not fields, so
    a choice without them does not carry them as nulls; a program may add its own, e.g. `label_probs`)."""
    schema["properties"].update(
        reward={"type": "number", "description": "extension: the chosen sample's reward (Best-of-N)"},
        rewards={"type": "array", "items": {"type": "number"}, "description": "extension: every sample's"},
        choice_logprobs={
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "extension: log p(choice | prompt) of every choice (structured_outputs.choice)",
        },
    )


class CompletionChoice(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=declare_choice_extensions)

    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(OpenAIBaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=declare_choice_extensions)

    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler) -> dict[str, Any]:
        # A delta carries only what changed: {"role": ...} first, then {"content": ...}, {} at the end.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(OpenAIBaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "dln"
    root: str | None = None
    parent: str | None = None


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
