"""Frames: ``u32 length | u8 version | body``, cut out of an arbitrary byte stream."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cocoon.protocol.errors import ErrorCode, RemoteProtocolError
from cocoon.protocol.framing import (
    DEFAULT_MAX_FRAME,
    HEADER,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
)


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_encode_frame_layout() -> None:
    frame = encode_frame(b"abc")
    assert frame == b"\x00\x00\x00\x04\x01abc"
    assert HEADER.size == 5


def test_round_trip() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"hello world"))
    assert decoder.next_frame() == b"hello world"
    assert decoder.next_frame() is None


def test_frame_split_into_single_bytes() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"split me")
    for i, byte in enumerate(frame):
        assert decoder.next_frame() is None, f"frame complete after only {i} bytes"
        decoder.feed(bytes([byte]))
    assert decoder.next_frame() == b"split me"
    assert decoder.next_frame() is None


def test_several_frames_in_one_chunk() -> None:
    bodies = [b"one", b"two", b"x" * 1000, b"\x00"]
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(b) for b in bodies))
    assert drain(decoder) == bodies


def test_frames_across_chunk_boundaries() -> None:
    bodies = [b"alpha", b"beta", b"gamma"]
    stream = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start in range(0, len(stream), 7):
        decoder.feed(stream[start : start + 7])
        got.extend(drain(decoder))
    assert got == bodies


def test_partial_frame_then_eof_raises() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"truncated body")
    decoder.feed(frame[:-3])
    assert decoder.next_frame() is None
    assert not decoder.eof
    decoder.feed(b"")
    assert decoder.eof
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


def test_partial_header_then_eof_raises() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00")
    assert decoder.next_frame() is None
    decoder.feed(b"")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_clean_eof_between_frames_returns_none() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"last"))
    decoder.feed(b"")
    assert decoder.next_frame() == b"last"
    assert decoder.next_frame() is None
    assert decoder.eof


def test_oversized_frame_rejected_on_header_alone() -> None:
    decoder = FrameDecoder(max_frame=100)
    decoder.feed(HEADER.pack(101, PROTOCOL_VERSION)[:4])
    assert decoder.next_frame() is None  # not even a full header yet
    decoder.feed(HEADER.pack(101, PROTOCOL_VERSION)[4:])  # the header is complete; no body
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE


def test_frame_of_exactly_max_size_is_accepted() -> None:
    decoder = FrameDecoder(max_frame=100)
    body = b"b" * 99  # the length counts the version byte too
    decoder.feed(encode_frame(body))
    assert decoder.next_frame() == body


def test_default_max_frame_rejects_huge_length() -> None:
    decoder = FrameDecoder()
    assert decoder.max_frame == DEFAULT_MAX_FRAME
    decoder.feed(HEADER.pack(DEFAULT_MAX_FRAME + 1, PROTOCOL_VERSION))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_rejected(version: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"body", version=version))
    with pytest.raises(RemoteProtocolError, match="version") as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.PROTOCOL_ERROR


def test_zero_length_rejected() -> None:
    decoder = FrameDecoder()
    decoder.feed(HEADER.pack(0, PROTOCOL_VERSION) + b"more bytes")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_empty_body_frame_is_returned() -> None:
    # length 1 is the version byte alone: a valid (empty) frame at this layer
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b""))
    assert decoder.next_frame() == b""


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=512), cut=st.integers(min_value=0, max_value=512))
def test_random_bytes_only_raise_remote_protocol_error(data: bytes, cut: int) -> None:
    decoder = FrameDecoder(max_frame=1024)
    try:
        for chunk in (data[:cut], data[cut:]):
            if chunk:  # feed(b"") means end of input
                decoder.feed(chunk)
                drain(decoder)
        decoder.feed(b"")
        drain(decoder)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None, database=None)
@given(bodies=st.lists(st.binary(max_size=200), max_size=8), step=st.integers(min_value=1, max_value=50))
def test_any_chunking_yields_the_same_frames(bodies: list[bytes], step: int) -> None:
    stream = b"".join(encode_frame(b) for b in bodies)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for start in range(0, len(stream), step):
        decoder.feed(stream[start : start + step])
        got.extend(drain(decoder))
    decoder.feed(b"")
    got.extend(drain(decoder))
    assert got == bodies
