"""Wire messages: msgpack maps tagged by ``t``, bounded at decode time."""

from __future__ import annotations

import typing

import msgspec
import pytest

from cocoon.protocol.messages import (
    MAX_BODY,
    OPENER_MESSAGES,
    RESPONDER_MESSAGES,
    STREAM_CLOSING,
    STREAM_OPENING,
    Announce,
    Cancel,
    Capacity,
    Challenge,
    Data,
    End,
    Error,
    Goodbye,
    Hello,
    ListModels,
    ListWorkers,
    Message,
    ModelInfo,
    ModelList,
    Open,
    PayAccount,
    PayTerms,
    Ping,
    Pong,
    Usage,
    Voucher,
    Welcome,
    WorkerList,
    WorkerOffer,
    decode_message,
    encode_message,
)

KEY = bytes(range(32))
SIG = bytes(range(64))

EXAMPLES: dict[type, Message] = {
    Challenge: Challenge(nonce=b"\x01" * 32, software="cocoon/0.1"),
    Hello: Hello(role="client", public_key=KEY, signature=SIG, software="c", evidence=b"quote"),
    Welcome: Welcome(role="proxy", software="p"),
    Announce: Announce(model="m", engine="llama_cpp", capacity=4, price_milli=1500, max_tokens=4096),
    Capacity: Capacity(capacity=0),
    Ping: Ping(nonce=7),
    Pong: Pong(nonce=7),
    Goodbye: Goodbye(reason="restarting"),
    Voucher: Voucher(channel=b"\x01" * 32, seqno=3, amount=10**12, expiry=2**31, signature=SIG, close_delay=60),
    PayAccount: PayAccount(stream_id=7, wallet=b"\x02" * 32, last_seqno=2, last_amount=5),
    PayTerms: PayTerms(
        stream_id=7,
        root=b"\x03" * 32,
        proxy_wallet=b"\x04" * 32,
        close_delay=3600,
        channel=b"\x05" * 32,
        min_stake=10**9,
        exists=True,
        balance=5 * 10**9,
        stake=10**9,
        charged=77,
        paid=70,
        seqno=2,
    ),
    Open: Open(stream_id=1, model="m", kind="completion", stream=False, max_tokens=16, body=b'{"prompt":"x"}'),
    ListModels: ListModels(stream_id=3),
    ListWorkers: ListWorkers(stream_id=5, model="m"),
    WorkerList: WorkerList(
        stream_id=5,
        workers=[WorkerOffer(worker_id=bytes(range(32)), evidence=b"e", capacity=2, inflight=1, price_milli=1000)],
    ),
    ModelList: ModelList(
        stream_id=3, models=[ModelInfo(id="a", workers=2, capacity=8, max_tokens=2048), ModelInfo("b", 0, 0)]
    ),
    Data: Data(stream_id=5, payload=b"\x00\xff"),
    End: End(stream_id=5, usage=Usage(1, 2, 3, 4), finish_reason="length"),
    Cancel: Cancel(stream_id=9, reason="client left"),
    Error: Error(stream_id=2, code="engine_error", message="boom"),
}


def test_examples_cover_every_message_type() -> None:
    assert set(EXAMPLES) == set(typing.get_args(Message))


@pytest.mark.parametrize("message", list(EXAMPLES.values()), ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    decoded = decode_message(encode_message(message))
    assert type(decoded) is type(message)
    assert decoded == message


def test_tags_are_distinct() -> None:
    tags = [msgspec.msgpack.decode(encode_message(m))["t"] for m in EXAMPLES.values()]
    assert len(set(tags)) == len(tags)


# Golden bytes: computed once from this implementation and frozen, so that any change of the
# wire format (a renamed field, a new tag, another field order) shows up here.
GOLDEN: list[tuple[Message, str]] = [
    (
        Challenge(nonce=bytes(range(16)), software="cocoon/0.1"),
        "83a174a96368616c6c656e6765a56e6f6e6365c410000102030405060708090a0b0c0d0e0f"
        "a8736f667477617265aa636f636f6f6e2f302e31",
    ),
    (
        Hello(role="worker", public_key=bytes(range(32)), signature=bytes(range(64)), software="w"),
        "85a174a568656c6c6fa4726f6c65a6776f726b6572aa7075626c69635f6b6579c420"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "a97369676e6174757265c440"
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "a8736f667477617265a177",
    ),
    (
        Welcome(role="proxy"),
        "82a174a777656c636f6d65a4726f6c65a570726f7879",  # defaults are omitted
    ),
    (
        Open(stream_id=1, model="m", kind="chat", stream=True, max_tokens=0, body=b"{}"),
        "87a174a46f70656ea973747265616d5f696401a56d6f64656ca16da46b696e64a463686174"
        "a673747265616dc3aa6d61785f746f6b656e7300a4626f6479c4027b7d",
    ),
    (
        Data(stream_id=2, payload=b"hi"),
        "83a174a464617461a973747265616d5f696402a77061796c6f6164c4026869",
    ),
    (
        End(stream_id=3, usage=Usage(prompt_tokens=5, completion_tokens=7), finish_reason="stop"),
        "84a174a3656e64a973747265616d5f696403a5757361676584ad70726f6d70745f746f6b656e7305"
        "b1636f6d706c6574696f6e5f746f6b656e7307ad6361636865645f746f6b656e7300"
        "b0726561736f6e696e675f746f6b656e7300ad66696e6973685f726561736f6ea473746f70",
    ),
    (
        Error(stream_id=0, code="timeout", message="late"),
        "84a174a56572726f72a973747265616d5f696400a4636f6465a774696d656f7574a76d657373616765a46c617465",
    ),
]


@pytest.mark.parametrize(("message", "golden"), GOLDEN, ids=lambda v: type(v).__name__)
def test_golden_bytes(message: Message, golden: str) -> None:
    expected = bytes.fromhex(golden)
    assert encode_message(message) == expected
    assert decode_message(expected) == message


def test_golden_hello_is_a_tagged_map() -> None:
    raw = msgspec.msgpack.decode(bytes.fromhex(GOLDEN[1][1]))
    assert raw == {
        "t": "hello",
        "role": "worker",
        "public_key": bytes(range(32)),
        "signature": bytes(range(64)),
        "software": "w",
    }


def raw(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


def test_unknown_message_type_fails() -> None:
    with pytest.raises(msgspec.ValidationError, match="bogus"):
        decode_message(raw({"t": "bogus", "stream_id": 1}))


def test_missing_tag_fails() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_message(raw({"nonce": 1}))


@pytest.mark.parametrize("value", [[1, 2], "ping", 5, None])
def test_non_map_fails(value: object) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_message(raw(value))


def test_garbage_bytes_fail() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(b"\xc1")  # a reserved msgpack byte


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            {"t": "hello", "role": "worker", "public_key": b"k" * 31, "signature": SIG}, id="31-byte public key"
        ),
        pytest.param(
            {"t": "hello", "role": "worker", "public_key": b"k" * 33, "signature": SIG}, id="33-byte public key"
        ),
        pytest.param({"t": "hello", "role": "worker", "public_key": KEY, "signature": SIG[:63]}, id="short signature"),
        pytest.param({"t": "hello", "role": "admin", "public_key": KEY, "signature": SIG}, id="unknown role"),
        pytest.param({"t": "data", "stream_id": -1, "payload": b""}, id="negative stream id"),
        pytest.param({"t": "data", "stream_id": 0, "payload": b""}, id="stream id 0"),
        pytest.param({"t": "data", "stream_id": 2**62 + 1, "payload": b""}, id="stream id too large"),
        pytest.param({"t": "data", "stream_id": 1, "payload": "text"}, id="payload not bytes"),
        pytest.param({"t": "challenge", "nonce": b"n" * 15}, id="short nonce"),
        pytest.param({"t": "challenge", "nonce": b"n" * 16, "software": "s" * 4097}, id="oversized Text"),
        pytest.param({"t": "goodbye", "reason": "r" * 4097}, id="oversized reason"),
        pytest.param({"t": "ping", "nonce": -1}, id="negative nonce"),
        pytest.param({"t": "announce", "model": "", "engine": "e", "capacity": 1}, id="empty model name"),
        pytest.param({"t": "announce", "model": "m", "engine": "e", "capacity": 0}, id="capacity 0"),
        pytest.param(
            {"t": "open", "stream_id": 1, "model": "m", "kind": "embed", "stream": True, "max_tokens": 0, "body": b""},
            id="unknown kind",
        ),
        pytest.param({"t": "error", "stream_id": -1, "code": "x"}, id="negative error stream id"),
        pytest.param({"t": "error", "stream_id": 1, "code": "c" * 65}, id="oversized error code"),
        pytest.param({"t": "model_list", "stream_id": 1, "models": [{"id": "m"}] * 1025}, id="too many models"),
        pytest.param({"t": "data", "stream_id": 1}, id="missing field"),
    ],
)
def test_invalid_fields_fail(fields: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_message(raw(fields))


def test_text_at_limit_is_accepted() -> None:
    message = decode_message(raw({"t": "challenge", "nonce": b"n" * 16, "software": "s" * 4096}))
    assert isinstance(message, Challenge)
    assert len(message.software) == 4096


def test_oversized_blob_fails() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_message(raw({"t": "data", "stream_id": 1, "payload": b"\x00" * (MAX_BODY + 1)}))


def test_unknown_fields_are_ignored() -> None:
    message = decode_message(raw({"t": "ping", "nonce": 3, "from_the_future": [1, {"a": b"b"}]}))
    assert message == Ping(nonce=3)


def test_unknown_fields_in_nested_structs_are_ignored() -> None:
    body = {
        "t": "end",
        "stream_id": 1,
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "energy_joules": 9},
        "signature": b"later",
    }
    assert decode_message(raw(body)) == End(stream_id=1, usage=Usage(prompt_tokens=2, completion_tokens=3))


def test_defaults_fill_missing_optional_fields() -> None:
    message = decode_message(raw({"t": "announce", "model": "m", "engine": "e", "capacity": 2}))
    assert message == Announce(model="m", engine="e", capacity=2, price_milli=1000, max_tokens=2048)


def test_deeply_nested_unknown_field_is_a_decode_error() -> None:
    # An ignored field still has to be skipped; deep nesting must not escape as RecursionError.
    body = b"\x83\xa1t\xa4ping\xa5nonce\x01\xa1x" + b"\x91" * 100_000 + b"\x01"
    with pytest.raises(msgspec.DecodeError):
        decode_message(body)


def test_usage_total() -> None:
    assert Usage(prompt_tokens=10, completion_tokens=5, cached_tokens=4, reasoning_tokens=2).total_tokens == 15


def test_messages_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Ping(nonce=1).nonce = 2  # type: ignore[misc]


def test_stream_message_groups() -> None:
    assert set(STREAM_OPENING) <= set(OPENER_MESSAGES)
    assert set(OPENER_MESSAGES).isdisjoint(RESPONDER_MESSAGES)
    assert Cancel in STREAM_CLOSING
    assert Data not in STREAM_CLOSING
    for kind in OPENER_MESSAGES + RESPONDER_MESSAGES:
        assert "stream_id" in kind.__struct_fields__
