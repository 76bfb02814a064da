"""Sealed answers, chunk by chunk (in the manner of chunked Oblivious HTTP, RFC 9458 §4.4).

Every answer has its own keys: the worker draws a fresh response nonce (32 random bytes) for it,
and prk = HKDF-Extract(salt = response nonce, response secret), key = HKDF-Expand(prk,
"cocoon/response/v2 key" ‖ request id), nonce base = HKDF-Expand(prk, "cocoon/response/v2 nonce"
‖ request id). The response secret (the HPKE exporter) follows from the request alone, so without
the nonce a proxy that sent one request to a worker twice would get two answers under one key and
one nonce sequence: the XOR of their ciphertexts is that of their texts, Poly1305's one-time keys
repeat, and chunks of the two splice into an answer that opens.

Chunk n is ``tag (8 B: request binding) | counter (8 B) | final (1 B) | ChaCha20-Poly1305(key,
nonce_base XOR counter, payload, aad = header)``; chunk 0's header goes on with the response
nonce (32 B), in the clear, which the opener reads to derive the keys. The nonce is authenticated
twice over: it is in chunk 0's associated data, and the keys derive from it (another nonce gives
keys under which nothing the worker sealed opens). The opener binds to chunk 0's nonce once that
chunk has opened, expects counters 0, 1, 2… and a final chunk, and names a reordered, replayed,
foreign, tampered or truncated stream precisely.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cocoon.seal.errors import SealError
from cocoon.seal.hpke import hkdf_expand, hkdf_extract

HEADER = struct.Struct(">8sQB")
RESPONSE_NONCE_SIZE = 32  # as RFC 9458's max(Nn, Nk) would be for a 32-byte key
FIRST_HEADER = HEADER.size + RESPONSE_NONCE_SIZE  # chunk 0's header: the response nonce follows
FINAL = 1
MAX_CHUNK = 8 * 1024 * 1024
LABEL = b"cocoon/response/v2 "  # v1 derived the keys from the secret alone


def _binding(request_id: bytes) -> bytes:
    return hashlib.sha256(LABEL + b"tag" + request_id).digest()[:8]


class _Keys:
    """One answer's key and nonce base: derived once per answer, never per chunk."""

    def __init__(self, secret: bytes, response_nonce: bytes, request_id: bytes) -> None:
        prk = hkdf_extract(response_nonce, secret)
        self.aead = ChaCha20Poly1305(hkdf_expand(prk, LABEL + b"key" + request_id, 32))
        self.nonce_base = int.from_bytes(hkdf_expand(prk, LABEL + b"nonce" + request_id, 12), "big")

    def nonce(self, counter: int) -> bytes:
        return (self.nonce_base ^ counter).to_bytes(12, "big")


class ChunkSealer:
    """The worker's side: seals each answer chunk in order; the last one is marked final.
    ``response_nonce``: ``RESPONSE_NONCE_SIZE`` fresh random bytes, never used for another answer."""

    def __init__(self, secret: bytes, request_id: bytes, response_nonce: bytes) -> None:
        if len(response_nonce) != RESPONSE_NONCE_SIZE:
            raise ValueError(f"a response nonce is {RESPONSE_NONCE_SIZE} bytes")
        self._keys = _Keys(secret, response_nonce, request_id)
        self._tag = _binding(request_id)
        self._response_nonce = response_nonce
        self.counter = 0
        self.finished = False

    def seal(self, payload: bytes, *, final: bool = False) -> bytes:
        if self.finished:
            raise SealError("after_final", "the answer is already complete")
        header = HEADER.pack(self._tag, self.counter, FINAL if final else 0)
        if self.counter == 0:  # (also when chunk 0 is the final one: a receipt alone)
            header += self._response_nonce
        chunk = header + self._keys.aead.encrypt(self._keys.nonce(self.counter), payload, header)
        self.counter += 1
        self.finished = final
        return chunk


class ChunkOpener:
    """The client's side: opens chunks strictly in order and insists on a final chunk. The
    answer's keys come from the response nonce in chunk 0."""

    def __init__(self, secret: bytes, request_id: bytes) -> None:
        self._secret = secret
        self._request_id = request_id
        self._tag = _binding(request_id)
        self._keys: _Keys | None = None  # until chunk 0 has opened
        self.expected = 0
        self.finished = False

    def open(self, chunk: bytes) -> tuple[bytes, bool]:
        """(payload, is final); ``SealError`` naming what is wrong with the chunk. A chunk that
        fails leaves the opener as it was (the client tries each candidate's on chunk 0)."""
        if len(chunk) < HEADER.size + 16 or len(chunk) > MAX_CHUNK:
            raise SealError("malformed", "a sealed chunk has an impossible size")
        tag, counter, flags = HEADER.unpack_from(chunk)
        if self.finished:
            raise SealError("after_final", "a chunk arrived after the final one")
        if tag != self._tag:
            raise SealError("foreign_chunk", "the chunk belongs to another request")
        if counter < self.expected:
            raise SealError("replayed", f"chunk {counter} was already received")
        if counter > self.expected:
            raise SealError("out_of_order", f"chunk {counter} arrived where {self.expected} was expected")
        if flags not in (0, FINAL):
            raise SealError("malformed", "unknown chunk flags")
        keys = self._keys
        end = HEADER.size
        if keys is None:  # chunk 0 (the counter says so): its header ends with the response nonce
            end = FIRST_HEADER
            if len(chunk) < end + 16:
                raise SealError("malformed", "the first chunk is too short for its response nonce")
            keys = _Keys(self._secret, chunk[HEADER.size : end], self._request_id)
        try:
            payload = keys.aead.decrypt(keys.nonce(counter), chunk[end:], chunk[:end])
        except InvalidTag as exc:
            raise SealError("tampered", f"chunk {counter} does not authenticate") from exc
        self._keys = keys  # bound: every later chunk opens under chunk 0's nonce only
        self.expected += 1
        self.finished = flags == FINAL
        return payload, self.finished

    def finish(self) -> None:
        """Call when the stream ended: a missing final chunk means the answer was truncated."""
        if not self.finished:
            raise SealError("truncated", f"the answer ended after {self.expected} chunks without its final chunk")
