"""Length-prefixed frames: ``u32 length (big endian) | u8 version | msgpack message``.

``length`` counts the version byte and the message. The decoder rejects an oversized frame as
soon as its header arrives, before buffering it, and an unknown version before decoding it.
"""

from __future__ import annotations

import struct

from cocoon.protocol.errors import ErrorCode, RemoteProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">IB")
DEFAULT_MAX_FRAME = 9 * 1024 * 1024  # a full request body plus headroom for the envelope


def encode_frame(body: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    return HEADER.pack(len(body) + 1, version) + body


class FrameDecoder:
    """Cuts a byte stream into frame bodies."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._eof = False

    def feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        self._buffer += data

    @property
    def eof(self) -> bool:
        return self._eof

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or None when more bytes are needed.

        At end of input with a partial frame buffered, raises ``RemoteProtocolError``.
        """
        if len(self._buffer) >= HEADER.size:
            length, version = HEADER.unpack_from(self._buffer)
            if length < 1:
                raise RemoteProtocolError("frame without a version byte")
            if length > self.max_frame:
                raise RemoteProtocolError(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame}",
                    ErrorCode.TOO_LARGE,
                )
            if version != PROTOCOL_VERSION:
                raise RemoteProtocolError(f"unknown protocol version {version}")
            end = 4 + length
            if len(self._buffer) >= end:
                body = bytes(self._buffer[HEADER.size : end])
                del self._buffer[:end]
                return body
        if self._eof and self._buffer:
            raise RemoteProtocolError(f"connection closed inside a frame ({len(self._buffer)} bytes)")
        return None
