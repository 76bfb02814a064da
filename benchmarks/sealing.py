"""End-to-end sealing cost, one core: per request and per streamed chunk.

Run: .venv/bin/python -m benchmarks.sealing
Baseline in the same run: one X25519 key generation plus exchange (the floor of any HPKE
sender setup) and one ChaCha20-Poly1305 seal of a chunk-sized payload.
"""

from __future__ import annotations

import os
import statistics
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from benchmarks.timing import per_call
from cocoon.seal.hpke import RecipientKey
from cocoon.seal.request import open_request, seal_request
from cocoon.seal.response import ChunkOpener, ChunkSealer

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * 2000 + b'"}], "max_tokens": 64}'
CHUNK = (
    b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":" word"},"finish_reason":null}]}'
)


def worker() -> tuple[bytes, bytes, RecipientKey]:
    key = X25519PrivateKey.generate()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return os.urandom(32), public, RecipientKey(key)


def main() -> None:
    peer = X25519PrivateKey.generate().public_key()
    x25519 = per_call(lambda: X25519PrivateKey.generate().exchange(peer), 300)
    aead = ChaCha20Poly1305(os.urandom(32))
    chacha = per_call(lambda: aead.encrypt(os.urandom(12), CHUNK, b"h" * 17), 20000)

    workers = [worker() for _ in range(3)]

    def seal(k: int) -> tuple[bytes, dict[bytes, bytes]]:
        return seal_request(
            BODY, kind="chat", request_id=os.urandom(16), content_key=os.urandom(32),
            recipients=[(w[0], w[1]) for w in workers[:k]],
        )  # fmt: skip

    seal1 = per_call(lambda: seal(1), 200)
    seal3 = per_call(lambda: seal(3), 100)
    sealed, secrets = seal(1)
    opened = per_call(lambda: open_request(sealed, worker_id=workers[0][0], hpke_key=workers[0][2]), 200)

    secret, rid = secrets[workers[0][0]], os.urandom(16)
    sealer, opener = ChunkSealer(secret, rid, os.urandom(32)), ChunkOpener(secret, rid)

    def chunk_round() -> None:
        opener.open(sealer.seal(CHUNK))

    chunk = per_call(chunk_round, 20000)
    per_request = seal1 + opened
    print(f"baseline X25519 keygen+exchange   {x25519 * 1e6:8.1f} us")
    print(f"baseline ChaCha20-Poly1305 seal   {chacha * 1e6:8.2f} us")
    print(f"client seal, K=1                  {seal1 * 1e6:8.1f} us   {seal1 / x25519:4.1f} x X25519")
    print(f"client seal, K=3                  {seal3 * 1e6:8.1f} us   {seal3 / x25519:4.1f} x X25519")
    print(f"worker open                       {opened * 1e6:8.1f} us   {opened / x25519:4.1f} x X25519")
    print(f"per request (seal K=1 + open)     {per_request * 1e6:8.1f} us   target <= 300 us")
    ratio = chunk / chacha
    print(f"per chunk (seal + open)           {chunk * 1e6:8.2f} us   {ratio:4.1f} x ChaCha seal   target <= 10 us")
    generation = generation_time(tokens=32)
    share = (per_request + 32 * chunk) / generation
    print(f"one 32-token answer on the embedded engine {generation * 1e3:8.1f} ms; sealing share {share * 100:.3f} %")


def generation_time(tokens: int) -> float:
    """Median time of a real 32-token answer on the embedded model (one thread)."""
    import asyncio

    from cocoon.engine.base import EngineRequest
    from cocoon.engine.llama_cpp import LlamaCppEngine

    async def run() -> float:
        engine = LlamaCppEngine(slots=1, threads=1)
        await engine.start()
        request = EngineRequest(
            "chat", {"messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": tokens}, stream=True
        )
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            async for _ in engine.generate(request):
                pass
            timings.append(time.perf_counter() - start)
        await engine.aclose()
        return statistics.median(timings)

    return asyncio.run(run())


if __name__ == "__main__":
    main()
