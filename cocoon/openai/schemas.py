"""OpenAI request bodies, validated with msgspec (field order mirrors OpenAI's reference).

The client validates every body before it leaves the machine (a 400 with OpenAI's wording);
the worker decodes the same schema again, because for it the body is peer input. Unknown
fields are rejected, as OpenAI does ("Unrecognized request argument"). Extensions of ours are
marked as such.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

MAX_MESSAGES = 4096
MAX_TEXT = 4 * 1024 * 1024

Text = Annotated[str, Meta(max_length=MAX_TEXT)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]
MaxTokens = Annotated[int, Meta(ge=1, le=2**31 - 1)]
Stop = (
    Annotated[str, Meta(max_length=1024)] | Annotated[list[Annotated[str, Meta(max_length=1024)]], Meta(max_length=4)]
)
Seed = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
User = Annotated[str, Meta(max_length=512)]
JsonObject = dict[str, Any]
# token id (a decimal integer, as OpenAI's keys are) → bias; the engine checks the id's range
LogitBias = Annotated[
    dict[Annotated[str, Meta(pattern=r"^[0-9]{1,10}$")], Annotated[float, Meta(ge=-100, le=100)]],
    Meta(max_length=1024),
]
Routing = Literal["balanced", "cheapest", "fastest"]
MaxPrice = Annotated[float, Meta(gt=0, le=1_000_000)]  # highest worker price coefficient (none: the configured cap)


class StreamOptions(Struct, forbid_unknown_fields=True):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # accepted; SSE events are not padded here


class ContentPart(Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One part of a message's content. Only text parts are served (``check_messages``): the
    fields of other kinds (``image_url``, ``input_audio``, ``file``) are not even kept."""

    type: Annotated[str, Meta(max_length=64)]
    text: Text | None = None
    refusal: Text | None = None  # a refusal part, in an assistant message of the history


class ChatMessage(Struct, forbid_unknown_fields=False, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | Annotated[list[ContentPart], Meta(max_length=1024)] | None = None
    name: Annotated[str, Meta(max_length=256)] | None = None
    tool_calls: Annotated[list[JsonObject], Meta(max_length=128)] | None = None
    tool_call_id: Annotated[str, Meta(max_length=256)] | None = None
    function_call: JsonObject | None = None  # the deprecated form of tool_calls


class ChatCompletionRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=MAX_MESSAGES)]
    model: ModelName
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    response_format: JsonObject | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    tools: Annotated[list[JsonObject], Meta(max_length=128)] | None = None
    tool_choice: Annotated[str, Meta(max_length=64)] | JsonObject | None = None
    parallel_tool_calls: bool | None = None
    functions: Annotated[list[JsonObject], Meta(max_length=128)] | None = None  # the deprecated form of tools
    function_call: Annotated[str, Meta(max_length=64)] | JsonObject | None = None  # and of tool_choice
    user: User | None = None
    # accepted for compatibility with OpenAI clients; they do not change the answer
    metadata: dict[str, Annotated[str, Meta(max_length=512)]] | None = None
    store: bool | None = None
    service_tier: Annotated[str, Meta(max_length=32)] | None = None
    reasoning_effort: Annotated[str, Meta(max_length=32)] | None = None
    prompt_cache_key: Annotated[str, Meta(max_length=1024)] | None = None
    safety_identifier: User | None = None
    # ours: how the network picks a worker for this request
    routing: Routing | None = None
    max_price: MaxPrice | None = None


class CompletionRequest(Struct, forbid_unknown_fields=True, omit_defaults=True):
    model: ModelName
    prompt: Text | Annotated[list[Text], Meta(min_length=1, max_length=1)]
    echo: bool | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    max_tokens: MaxTokens | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: Text | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: User | None = None
    # ours: how the network picks a worker for this request
    routing: Routing | None = None
    max_price: MaxPrice | None = None


Request = ChatCompletionRequest | CompletionRequest
Kind = Literal["chat", "completion"]
SCHEMAS: dict[str, type[ChatCompletionRequest] | type[CompletionRequest]] = {
    "chat": ChatCompletionRequest,
    "completion": CompletionRequest,
}

# Fields that describe the call rather than the generation; the worker does not pass them on.
NOT_FOR_ENGINE = frozenset(
    {"model", "stream", "stream_options", "n", "user", "metadata", "store", "service_tier", "max_completion_tokens"}
    | {"prompt_cache_key", "safety_identifier"}
    | {"routing", "max_price"}  # ours: for the network, not the engine
)


class InvalidRequest(ValueError):
    """A body that OpenAI would answer with 400; ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_request(kind: Kind, body: bytes) -> Request:
    """Decode and validate a request body; raises ``InvalidRequest`` with OpenAI's wording."""
    try:
        request = msgspec.json.decode(body, type=SCHEMAS[kind])
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = text.split("`$.", 1)[1].split("`", 1)[0] if "`$." in text else None
        if text.startswith("Object contains unknown field"):
            text = "Unrecognized request argument supplied: " + text.split("`")[1]
        raise InvalidRequest(text, param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from exc
    except RecursionError as exc:
        raise InvalidRequest("We could not parse the JSON body of your request: nested too deeply") from exc
    if request.n not in (None, 1):
        raise InvalidRequest("Only n=1 is supported", "n")
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
        )
    if isinstance(request, ChatCompletionRequest):
        check_messages(request.messages)
    if isinstance(request, CompletionRequest) and isinstance(request.prompt, list):
        request = msgspec.structs.replace(request, prompt=request.prompt[0])
    return request


NOT_TEXT = frozenset({"image_url", "input_audio", "file"})
"""OpenAI's content part types that carry something other than text."""


def check_messages(messages: list[ChatMessage]) -> None:
    """What OpenAI requires of messages beyond their shape, and what the text-only models
    served here can take: a part they could not read is refused, never dropped (the answer
    would be to a prompt the caller did not send)."""
    for i, message in enumerate(messages):
        content = message.content
        if content is None:
            # only an assistant's turn that called a tool (or a function's result) may be empty
            if message.role == "function" or (
                message.role == "assistant" and (message.tool_calls or message.function_call)
            ):
                continue
            raise InvalidRequest("Invalid value for 'content': expected a string, got null.", f"messages[{i}].content")
        if isinstance(content, str):
            continue
        if not content:
            raise InvalidRequest(
                f"Invalid 'messages[{i}].content': empty array. Expected an array with minimum length 1.",
                f"messages[{i}].content",
            )
        for j, part in enumerate(content):
            where = f"messages[{i}].content[{j}]"
            if part.type == "text":
                if part.text is None:
                    raise InvalidRequest(f"Missing required parameter: '{where}.text'.", f"{where}.text")
            elif part.type == "refusal" and message.role == "assistant":
                if part.refusal is None:
                    raise InvalidRequest(f"Missing required parameter: '{where}.refusal'.", f"{where}.refusal")
            elif part.type in NOT_TEXT:
                raise InvalidRequest(
                    f"Invalid content type. {part.type} is only supported by certain models; the models "
                    "of this network take text only.",
                    f"{where}.type",
                )
            else:
                allowed = "'text' and 'refusal'" if message.role == "assistant" else "'text'"
                raise InvalidRequest(f"Invalid value: '{part.type}'. Supported values are: {allowed}.", f"{where}.type")


def max_tokens_of(request: Request) -> int | None:
    if isinstance(request, ChatCompletionRequest) and request.max_completion_tokens is not None:
        return request.max_completion_tokens
    return request.max_tokens


def include_usage(request: Request) -> bool:
    return bool(request.stream and request.stream_options and request.stream_options.include_usage)


def engine_params(request: Request) -> dict[str, Any]:
    """The generation parameters for an engine: the body less call-level fields."""
    params: dict[str, Any] = {k: v for k, v in msgspec.to_builtins(request).items() if k not in NOT_FOR_ENGINE}
    limit = max_tokens_of(request)
    if limit is not None:
        params["max_tokens"] = limit
    return params
