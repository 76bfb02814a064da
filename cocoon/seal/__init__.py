"""End-to-end sealing between client and worker (pure: no I/O, no clock, randomness passed in).

``request``: the body sealed once under a fresh content key, the key wrapped by HPKE (RFC 9180,
X25519 / HKDF-SHA256 / ChaCha20-Poly1305) for each candidate worker. ``response``: the answer
sealed chunk by chunk under keys from the HPKE exporter and the worker's fresh response nonce, as
chunked Oblivious HTTP does.
``usage``: the worker-signed usage record (the receipt).
"""
