"""Peer verification by pinned public keys."""

from __future__ import annotations

import pytest

from cocoon.channel.verify import ANY_KEY, PeerIdentity, PeerRejected, PinnedKeyVerifier

WORKER_A = bytes([1]) * 32
WORKER_B = bytes([2]) * 32
CLIENT = bytes([3]) * 32


def test_pinned_key_is_accepted() -> None:
    verify = PinnedKeyVerifier({"worker": [WORKER_A]})
    identity = verify("worker", WORKER_A, b"", "cocoon/1")
    assert identity == PeerIdentity(role="worker", public_key=WORKER_A, software="cocoon/1")


def test_several_pinned_keys() -> None:
    verify = PinnedKeyVerifier({"worker": {WORKER_A, WORKER_B}})
    assert verify("worker", WORKER_A, b"", "").public_key == WORKER_A
    assert verify("worker", WORKER_B, b"", "").public_key == WORKER_B


def test_other_key_is_rejected() -> None:
    verify = PinnedKeyVerifier({"worker": [WORKER_A]})
    with pytest.raises(PeerRejected, match="not pinned"):
        verify("worker", WORKER_B, b"", "")


def test_key_pinned_for_another_role_is_rejected() -> None:
    verify = PinnedKeyVerifier({"worker": [WORKER_A], "client": [CLIENT]})
    with pytest.raises(PeerRejected):
        verify("worker", CLIENT, b"", "")
    with pytest.raises(PeerRejected):
        verify("client", WORKER_A, b"", "")


def test_unknown_role_is_rejected() -> None:
    verify = PinnedKeyVerifier({"worker": ANY_KEY})
    with pytest.raises(PeerRejected, match="role 'proxy'"):
        verify("proxy", WORKER_A, b"", "")


def test_empty_pin_list_rejects_everyone() -> None:
    verify = PinnedKeyVerifier({"worker": []})
    with pytest.raises(PeerRejected):
        verify("worker", WORKER_A, b"", "")


def test_any_key_accepts_any_key() -> None:
    verify = PinnedKeyVerifier({"client": ANY_KEY})
    for key in (WORKER_A, WORKER_B, CLIENT, bytes(32)):
        assert verify("client", key, b"evidence", "sw") == PeerIdentity("client", key, "sw")


def test_rejection_message_does_not_leak_the_whole_key() -> None:
    verify = PinnedKeyVerifier({"worker": [WORKER_A]})
    key = bytes(range(32))
    with pytest.raises(PeerRejected) as info:
        verify("worker", key, b"", "")
    assert key.hex()[:16] in str(info.value)
    assert key.hex() not in str(info.value)


def test_identity_short_form() -> None:
    identity = PeerIdentity(role="worker", public_key=bytes(range(32)))
    assert identity.short == "worker:000102030405"
