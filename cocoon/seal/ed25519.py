"""Ed25519 signature checks on libsodium, the ones on every paid request's path.

libsodium (through PyNaCl, which pytoniq already brings) verifies in about half the time of
OpenSSL's Ed25519 in ``cryptography`` on the machines we measured (``benchmarks/micro.py``), and
the proxy checks two signatures per answer. It is also the stricter of the two: it refuses
non-canonical and small-order keys and signatures, so nothing it accepts is refused on chain
(TON's ``CHKSIGNU``) or by OpenSSL. Signing stays on ``cryptography``: there both cost the same.
"""

from __future__ import annotations

from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``message``."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True
