"""OpenAI request bodies: validation with OpenAI's wording, and what reaches the engine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cocoon.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    InvalidRequest,
    engine_params,
    include_usage,
    max_tokens_of,
    parse_request,
)

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}
COMPLETION: dict[str, Any] = {"model": "m", "prompt": "Once upon a time"}


def body(base: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({**base, **extra}).encode()


def invalid(kind: str, data: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(kind, data)  # type: ignore[arg-type]
    return info.value


def test_valid_chat_body() -> None:
    request = parse_request(
        "chat",
        body(
            CHAT,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"},
            ],
            temperature=0.5,
            top_p=1,
            max_tokens=16,
            stop=["\n", "END"],
            seed=7,
            stream=True,
            stream_options={"include_usage": True},
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice="auto",
            n=1,
        ),
    )
    assert isinstance(request, ChatCompletionRequest)
    assert request.model == "m"
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[1].content[0].text == "Hi"  # type: ignore[index,union-attr]
    assert request.temperature == 0.5
    assert request.stop == ["\n", "END"]
    assert request.max_tokens == 16


def test_valid_completion_body() -> None:
    request = parse_request("completion", body(COMPLETION, max_tokens=8, echo=False, suffix="!", logprobs=2))
    assert isinstance(request, CompletionRequest)
    assert request.prompt == "Once upon a time"
    assert request.max_tokens == 8
    assert request.logprobs == 2


def test_completion_prompt_list_of_one_becomes_a_string() -> None:
    request = parse_request("completion", body(COMPLETION, prompt=["only one"]))
    assert request.prompt == "only one"  # type: ignore[union-attr]


def test_completion_prompt_list_of_two_is_rejected() -> None:
    error = invalid("completion", body(COMPLETION, prompt=["a", "b"]))
    assert error.param == "prompt"


def test_unknown_field() -> None:
    error = invalid("chat", body(CHAT, foo=1))
    assert str(error) == "Unrecognized request argument supplied: foo"
    assert error.param is None


def test_unknown_field_in_completion() -> None:
    error = invalid("completion", body(COMPLETION, messages=[]))
    assert str(error) == "Unrecognized request argument supplied: messages"


def test_unknown_field_in_stream_options() -> None:
    error = invalid("chat", body(CHAT, stream_options={"include_usage": True, "bar": 1}))
    assert str(error) == "Unrecognized request argument supplied: bar"
    assert error.param == "stream_options"


def test_unknown_fields_inside_messages_are_tolerated() -> None:
    request = parse_request("chat", body(CHAT, messages=[{"role": "user", "content": "x", "refusal": None}]))
    assert request.messages[0].content == "x"  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_n_above_one_is_rejected(kind: str) -> None:
    error = invalid(kind, body(CHAT if kind == "chat" else COMPLETION, n=2))
    assert error.param == "n"
    assert "n=1" in str(error)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"n": 0}, "n"),
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"stream": "yes"}, "stream"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),  # keys are token ids (an engine lost a slot to one)
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ],
)
def test_out_of_range_values_are_rejected_with_param(extra: dict[str, Any], param: str) -> None:
    error = invalid("chat", body(CHAT, **extra))
    assert error.param == param


def test_temperature_message_wording() -> None:
    error = invalid("chat", body(CHAT, temperature=3))
    assert "2.0" in str(error)
    assert "temperature" in str(error)


def test_stop_of_four_is_accepted() -> None:
    assert parse_request("chat", body(CHAT, stop=["a", "b", "c", "d"])).stop == ["a", "b", "c", "d"]


def test_invalid_role_names_the_nested_field() -> None:
    error = invalid("chat", body(CHAT, messages=[{"role": "robot", "content": "x"}]))
    assert error.param == "messages[0].role"


def test_missing_model_is_rejected() -> None:
    error = invalid("chat", json.dumps({"messages": CHAT["messages"]}).encode())
    assert "model" in str(error)


@pytest.mark.parametrize("data", [b"{not json", b"", b'{"model": "m",', b"\xff\xfe"])
def test_invalid_json(data: bytes) -> None:
    error = invalid("chat", data)
    assert str(error).startswith("We could not parse the JSON body of your request")
    assert error.param is None


def test_json_that_is_not_an_object() -> None:
    assert isinstance(invalid("chat", b"[1, 2]"), InvalidRequest)


def test_deeply_nested_json_is_invalid_request() -> None:
    depth = 100_000
    data = b'{"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"a":'
    data += b"[" * depth + b"]" * depth + b"}}"
    error = invalid("chat", data)
    assert str(error).startswith("We could not parse the JSON body of your request")


def test_engine_params_drop_call_level_fields() -> None:
    request = parse_request(
        "chat",
        body(
            CHAT,
            stream=True,
            stream_options={"include_usage": True},
            user="u-1",
            n=1,
            metadata={"k": "v"},
            store=False,
            service_tier="auto",
            temperature=0.2,
            seed=3,
        ),
    )
    params = engine_params(request)
    assert params == {"messages": [{"role": "user", "content": "Hello"}], "temperature": 0.2, "seed": 3}


def test_engine_params_map_max_completion_tokens() -> None:
    request = parse_request("chat", body(CHAT, max_completion_tokens=33))
    assert max_tokens_of(request) == 33
    params = engine_params(request)
    assert params["max_tokens"] == 33
    assert "max_completion_tokens" not in params


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    request = parse_request("chat", body(CHAT, max_tokens=10, max_completion_tokens=20))
    assert engine_params(request)["max_tokens"] == 20


def test_engine_params_completion() -> None:
    request = parse_request("completion", body(COMPLETION, max_tokens=5, model="x", stream=False, stop="\n"))
    assert engine_params(request) == {"prompt": "Once upon a time", "max_tokens": 5, "stop": "\n"}


def test_no_limit_means_no_max_tokens() -> None:
    request = parse_request("chat", body(CHAT))
    assert max_tokens_of(request) is None
    assert "max_tokens" not in engine_params(request)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, False),
        ({"stream": True}, False),
        ({"stream": True, "stream_options": {}}, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True),
    ],
)
def test_include_usage(extra: dict[str, Any], expected: bool) -> None:
    assert include_usage(parse_request("chat", body(CHAT, **extra))) is expected
    assert include_usage(parse_request("completion", body(COMPLETION, **extra))) is expected


def test_network_fields_do_not_reach_the_engine() -> None:
    from cocoon.openai.schemas import engine_params, parse_request

    body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"routing":"fastest","max_price":1.5}'
    request = parse_request("chat", body)
    assert request.routing == "fastest" and request.max_price == 1.5
    assert "routing" not in engine_params(request) and "max_price" not in engine_params(request)


def test_a_requests_price_cap_is_positive() -> None:
    """0 would mean "any price" downstream; the request's cap is a positive coefficient."""
    from cocoon.openai.schemas import InvalidRequest, parse_request

    for value in ("0", "-1"):
        with pytest.raises(InvalidRequest) as caught:
            parse_request(
                "chat", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_price":%s}' % value.encode()
            )
        assert caught.value.param == "max_price"
    small = parse_request("chat", b'{"model":"m","messages":[{"role":"user","content":"x"}],"max_price":0.0001}')
    assert small.max_price == 0.0001


# --- what OpenAI refuses beyond the shape of a body --------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize("stream", [{}, {"stream": False}, {"stream": None}])
def test_stream_options_need_stream(kind: str, stream: dict[str, Any]) -> None:
    base = CHAT if kind == "chat" else COMPLETION
    error = invalid(kind, body(base, stream_options={"include_usage": True}, **stream))
    assert str(error) == "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    assert error.param == "stream_options"
    assert parse_request(kind, body(base, stream_options=None)).stream_options is None  # null is leaving it out


@pytest.mark.parametrize("role", ["system", "developer", "user", "tool", "assistant"])
@pytest.mark.parametrize("content", [{"content": None}, {}])
def test_a_message_without_content_is_refused(role: str, content: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": role, **content}]
    error = invalid("chat", body(CHAT, messages=messages))
    assert error.param == "messages[1].content"
    assert "got null" in str(error)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
        {"role": "function", "name": "f", "content": None},
    ],
)
def test_content_may_be_null_only_where_openai_allows_it(message: dict[str, Any]) -> None:
    request = parse_request("chat", body(CHAT, messages=[{"role": "user", "content": "Hi"}, message]))
    assert request.messages[1].content is None  # type: ignore[union-attr]


def test_a_function_call_of_the_history_reaches_the_engine() -> None:
    call = {"name": "f", "arguments": "{}"}
    request = parse_request("chat", body(CHAT, messages=[{"role": "assistant", "function_call": call}]))
    assert engine_params(request)["messages"] == [{"role": "assistant", "function_call": call}]


@pytest.mark.parametrize(
    ("part", "type_"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}, "image_url"),
        ({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}, "input_audio"),
        ({"type": "file", "file": {"file_id": "file-1"}}, "file"),
    ],
)
def test_parts_that_are_not_text_are_refused_not_dropped(part: dict[str, Any], type_: str) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this?"}, part]}]
    error = invalid("chat", body(CHAT, messages=messages))
    assert error.param == "messages[0].content[1].type"
    assert str(error).startswith(f"Invalid content type. {type_} is only supported by certain models")


@pytest.mark.parametrize(
    ("content", "param", "says"),
    [
        ([{"type": "hologram", "text": "x"}], "messages[0].content[0].type", "Invalid value: 'hologram'"),
        ([{"type": "refusal", "refusal": "no"}], "messages[0].content[0].type", "Invalid value: 'refusal'"),
        ([{"type": "text"}], "messages[0].content[0].text", "Missing required parameter"),
        ([], "messages[0].content", "empty array"),
    ],
)
def test_odd_content_parts_are_refused(content: list[dict[str, Any]], param: str, says: str) -> None:
    error = invalid("chat", body(CHAT, messages=[{"role": "user", "content": content}]))
    assert error.param == param
    assert says in str(error)


def test_text_parts_and_an_assistants_refusal_part_are_accepted() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},
    ]
    request = parse_request("chat", body(CHAT, messages=messages))
    assert engine_params(request)["messages"] == messages


def test_fields_openai_takes_are_taken_and_those_about_the_call_kept_from_the_engine() -> None:
    functions = [{"name": "weather", "parameters": {"type": "object"}}]
    request = parse_request(
        "chat",
        body(CHAT, functions=functions, function_call="auto", reasoning_effort="low", prompt_cache_key="k",
             safety_identifier="u1", stream=True, stream_options={"include_usage": True, "include_obfuscation": False},
             logit_bias={"42": -100}),
    )  # fmt: skip
    params = engine_params(request)
    assert params["functions"] == functions and params["function_call"] == "auto"  # (the engines take them)
    assert params["logit_bias"] == {"42": -100}
    assert params["reasoning_effort"] == "low"  # (for a reasoning model behind an engine server)
    assert not {"prompt_cache_key", "safety_identifier", "stream_options"} & params.keys()
