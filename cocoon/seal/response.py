"""Sealed answers, chunk by chunk (in the manner of chunked Oblivious HTTP).

Keys come from the response secret (the HPKE exporter): key = HKDF(secret, "key"), nonce base =
HKDF(secret, "nonce"). Chunk n is ``tag (8 B: request binding) | counter (8 B) | final (1 B) |
ChaCha20-Poly1305(key, nonce_base XOR counter, payload, aad = header)``. The opener expects
counters 0, 1, 2… and a final chunk: it names a reordered, replayed, foreign, tampered or
truncated stream precisely.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cocoon.seal.errors import SealError
from cocoon.seal.hpke import hkdf_expand

HEADER = struct.Struct(">8sQB")
FINAL = 1
MAX_CHUNK = 8 * 1024 * 1024


def _expand(secret: bytes, label: bytes, length: int) -> bytes:
    return hkdf_expand(secret, b"cocoon/response/v1 " + label, length)


def _binding(request_id: bytes) -> bytes:
    return hashlib.sha256(b"cocoon/response/v1 tag" + request_id).digest()[:8]


class _Keys:
    def __init__(self, secret: bytes, request_id: bytes) -> None:
        self.aead = ChaCha20Poly1305(_expand(secret, b"key", 32))
        self.nonce_base = int.from_bytes(_expand(secret, b"nonce", 12), "big")
        self.tag = _binding(request_id)

    def nonce(self, counter: int) -> bytes:
        return (self.nonce_base ^ counter).to_bytes(12, "big")


class ChunkSealer:
    """The worker's side: seals each answer chunk in order; the last one is marked final."""

    def __init__(self, secret: bytes, request_id: bytes) -> None:
        self._keys = _Keys(secret, request_id)
        self.counter = 0
        self.finished = False

    def seal(self, payload: bytes, *, final: bool = False) -> bytes:
        if self.finished:
            raise SealError("after_final", "the answer is already complete")
        header = HEADER.pack(self._keys.tag, self.counter, FINAL if final else 0)
        chunk = header + self._keys.aead.encrypt(self._keys.nonce(self.counter), payload, header)
        self.counter += 1
        self.finished = final
        return chunk


class ChunkOpener:
    """The client's side: opens chunks strictly in order and insists on a final chunk."""

    def __init__(self, secret: bytes, request_id: bytes) -> None:
        self._keys = _Keys(secret, request_id)
        self.expected = 0
        self.finished = False

    def open(self, chunk: bytes) -> tuple[bytes, bool]:
        """(payload, is final); ``SealError`` naming what is wrong with the chunk."""
        if len(chunk) < HEADER.size + 16 or len(chunk) > MAX_CHUNK:
            raise SealError("malformed", "a sealed chunk has an impossible size")
        tag, counter, flags = HEADER.unpack_from(chunk)
        if self.finished:
            raise SealError("after_final", "a chunk arrived after the final one")
        if tag != self._keys.tag:
            raise SealError("foreign_chunk", "the chunk belongs to another request")
        if counter < self.expected:
            raise SealError("replayed", f"chunk {counter} was already received")
        if counter > self.expected:
            raise SealError("out_of_order", f"chunk {counter} arrived where {self.expected} was expected")
        if flags not in (0, FINAL):
            raise SealError("malformed", "unknown chunk flags")
        try:
            payload = self._keys.aead.decrypt(self._keys.nonce(counter), chunk[HEADER.size :], chunk[: HEADER.size])
        except InvalidTag as exc:
            raise SealError("tampered", f"chunk {counter} does not authenticate") from exc
        self.expected += 1
        self.finished = flags == FINAL
        return payload, self.finished

    def finish(self) -> None:
        """Call when the stream ended: a missing final chunk means the answer was truncated."""
        if not self.finished:
            raise SealError("truncated", f"the answer ended after {self.expected} chunks without its final chunk")
