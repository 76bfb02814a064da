"""The embedded engine's chat messages: content parts joined into the string its chat template
takes (a list of parts failed every such request in the template)."""

from __future__ import annotations

from cocoon.engine.llama_cpp import text_messages
from cocoon.openai.schemas import engine_params, parse_request


def test_content_parts_are_joined_and_other_messages_kept_as_they_are() -> None:
    body = (
        b'{"model": "m", "messages": ['
        b'{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},'
        b'{"role": "user", "content": [{"type": "text", "text": "Name three"}, {"type": "text", "text": "colours."}]},'
        b'{"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot."}]},'
        b'{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function"}]},'
        b'{"role": "user", "content": "Why?"}]}'
    )
    messages = engine_params(parse_request("chat", body))["messages"]
    assert text_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name three\ncolours."},
        {"role": "assistant", "content": "I cannot."},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}], "content": ""},
        {"role": "user", "content": "Why?"},
    ]
    assert isinstance(messages[1]["content"], list)  # the caller's messages are not changed
