"""Voucher cells as the channel contracts verify them (contracts/README.md, "Signed data")."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from pytoniq_core import Address, begin_cell

from cocoon.keys import public_bytes
from cocoon.payments.vouchers import (
    TAG_CLIENT_VOUCHER,
    TAG_COMMIT,
    TAG_COOP_CLOSE,
    TAG_WORKER_VOUCHER,
    SignedVoucher,
    Voucher,
    VoucherError,
    check_next,
    commit_cell,
    coop_close_cell,
    redeem_body,
    sign_cell,
    verify_cell,
)

CHANNEL = bytes([0x11]) * 32
OTHER_CHANNEL = bytes([0x22]) * 32
SEED = b"proxy-key".ljust(32, b"\x00")
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUBLIC = public_bytes(KEY)
VECTOR_HASH = "0ba1baa2f863b19d282ff22f3706fbf518ce9ed0ba9ece1625e1904bd13d1414"
VECTOR_SIGNATURE = (
    "46abd554520e942010ea01ccc9eed47548d52717053ae35fb639ca162de4ab31"
    "21d193cbfa2ac13424ce9c30b0ddbe2eef92a8f6cc0a65b1e8f0d4178e771706"
)
NOW = 1_700_000_000


def vector() -> Voucher:
    return Voucher(TAG_WORKER_VOUCHER, CHANNEL, seqno=7, amount=123456789, expiry=1700086400)


def voucher(seqno: int = 1, amount: int = 100, expiry: int = NOW + 3600, **changes: object) -> Voucher:
    return dataclasses.replace(Voucher(TAG_WORKER_VOUCHER, CHANNEL, seqno, amount, expiry), **changes)


def code_of(excinfo: pytest.ExceptionInfo[VoucherError]) -> str:
    return excinfo.value.code


# --- the README test vector ---------------------------------------------------------------------


def test_vector_hash() -> None:
    assert vector().hash().hex() == VECTOR_HASH
    assert vector().cell().hash.hex() == VECTOR_HASH


def test_vector_signature() -> None:
    signed = vector().sign(KEY)
    assert signed.signature.hex() == VECTOR_SIGNATURE
    signed.verify(PUBLIC)


def test_vector_matches_the_readme_recipe() -> None:
    # built and signed exactly as contracts/README.md shows, with PyNaCl
    cell = (
        begin_cell()
        .store_uint(TAG_WORKER_VOUCHER, 32)
        .store_address(Address((0, CHANNEL)))
        .store_uint(7, 64)
        .store_coins(123456789)
        .store_uint(1700086400, 32)
        .end_cell()
    )
    assert cell.hash == vector().hash()
    assert SigningKey(SEED).sign(cell.hash).signature == vector().sign(KEY).signature


@settings(max_examples=300)
@given(
    tag=st.sampled_from([TAG_CLIENT_VOUCHER, TAG_WORKER_VOUCHER]),
    channel=st.binary(min_size=32, max_size=32),
    seqno=st.integers(1, 2**64 - 1),
    amount=st.one_of(st.integers(0, 2**120 - 1), st.sampled_from([0, 1, 255, 256, 2**64, 2**120 - 1])),
    expiry=st.integers(0, 2**32 - 1),
)
def test_hash_from_the_fields_equals_the_cell_hash(
    tag: int, channel: bytes, seqno: int, amount: int, expiry: int
) -> None:
    # Voucher.hash() skips building the cell; it must give pytoniq's representation hash exactly
    v = Voucher(tag, channel, seqno, amount, expiry)
    assert v.hash() == v.cell().hash


# --- layouts ------------------------------------------------------------------------------------


def test_voucher_layout() -> None:
    v = voucher(seqno=5, amount=0x0102, expiry=77)
    cell = v.cell()
    assert not cell.refs
    s = cell.begin_parse()
    assert s.load_uint(32) == TAG_WORKER_VOUCHER
    address = s.load_address()
    assert (address.wc, address.hash_part) == (0, CHANNEL)
    assert s.load_uint(64) == 5
    assert s.load_coins() == 0x0102
    assert s.load_uint(32) == 77
    assert s.remaining_bits == 0


def test_client_and_worker_vouchers_differ() -> None:
    assert voucher(tag=TAG_CLIENT_VOUCHER).hash() != voucher(tag=TAG_WORKER_VOUCHER).hash()


def test_coop_close_layout() -> None:
    cell = coop_close_cell(CHANNEL, 9, 5000)
    assert not cell.refs
    s = cell.begin_parse()
    assert s.load_uint(32) == TAG_COOP_CLOSE
    assert s.load_address().hash_part == CHANNEL
    assert s.load_uint(64) == 9
    assert s.load_coins() == 5000
    assert s.remaining_bits == 0


def test_commit_layout() -> None:
    state = bytes(range(32))
    cell = commit_cell(CHANNEL, 3, state)
    assert not cell.refs
    s = cell.begin_parse()
    assert s.load_uint(32) == TAG_COMMIT
    assert s.load_address().hash_part == CHANNEL
    assert s.load_uint(64) == 3
    assert s.load_uint(256) == int.from_bytes(state, "big")
    assert s.remaining_bits == 0


def test_redeem_body() -> None:
    signed = vector().sign(KEY)
    body = redeem_body(signed, query_id=42)
    s = body.begin_parse()
    assert s.load_uint(32) == 0xC0C00102
    assert s.load_uint(64) == 42
    assert s.load_bytes(64) == signed.signature
    assert s.remaining_bits == 0
    assert len(body.refs) == 1
    assert body.refs[0].hash.hex() == VECTOR_HASH


def test_sign_cell_is_over_the_hash() -> None:
    cell = coop_close_cell(CHANNEL, 1, 10)
    signature = sign_cell(cell, KEY)
    assert signature == SigningKey(SEED).sign(cell.hash).signature
    verify_cell(cell, signature, PUBLIC)
    with pytest.raises(VoucherError) as excinfo:
        verify_cell(coop_close_cell(CHANNEL, 1, 11), signature, PUBLIC)
    assert code_of(excinfo) == "bad_signature"


# --- bounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"tag": TAG_COOP_CLOSE},
        {"tag": 0},
        {"channel": bytes(31)},
        {"channel": bytes(33)},
        {"seqno": 0},
        {"seqno": 2**64},
        {"amount": -1},
        {"amount": 2**120},
        {"expiry": -1},
        {"expiry": 2**32},
    ],
)
def test_voucher_out_of_range(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        voucher(**changes)


def test_voucher_at_the_limits() -> None:
    v = voucher(seqno=2**64 - 1, amount=2**120 - 1, expiry=2**32 - 1)
    v.sign(KEY).verify(PUBLIC)
    voucher(seqno=1, amount=0, expiry=0).cell()


@pytest.mark.parametrize(
    ("channel", "seqno", "total"),
    [(bytes(31), 1, 0), (CHANNEL, 0, 0), (CHANNEL, 2**64, 0), (CHANNEL, 1, -1), (CHANNEL, 1, 2**120)],
)
def test_coop_close_out_of_range(channel: bytes, seqno: int, total: int) -> None:
    with pytest.raises(ValueError):
        coop_close_cell(channel, seqno, total)


@pytest.mark.parametrize(
    ("channel", "seq", "state"),
    [(bytes(33), 1, bytes(32)), (CHANNEL, 0, bytes(32)), (CHANNEL, 2**64, bytes(32)), (CHANNEL, 1, bytes(31))],
)
def test_commit_out_of_range(channel: bytes, seq: int, state: bytes) -> None:
    with pytest.raises(ValueError):
        commit_cell(channel, seq, state)


def test_redeem_query_id_range() -> None:
    signed = vector().sign(KEY)
    redeem_body(signed, 2**64 - 1)
    with pytest.raises(ValueError):
        redeem_body(signed, 2**64)
    with pytest.raises(ValueError):
        redeem_body(signed, -1)


# --- VoucherError codes -------------------------------------------------------------------------


def test_malformed_signature() -> None:
    with pytest.raises(VoucherError) as excinfo:
        SignedVoucher(vector(), bytes(63))
    assert code_of(excinfo) == "malformed"
    assert str(excinfo.value).startswith("malformed: ")


def test_malformed_public_key() -> None:
    with pytest.raises(VoucherError) as excinfo:
        vector().sign(KEY).verify(PUBLIC[:31])
    assert code_of(excinfo) == "malformed"


def test_bad_signature_wrong_key() -> None:
    with pytest.raises(VoucherError) as excinfo:
        vector().sign(KEY).verify(public_bytes(Ed25519PrivateKey.generate()))
    assert code_of(excinfo) == "bad_signature"


def test_bad_signature_changed_voucher() -> None:
    signed = vector().sign(KEY)
    for changed in (
        dataclasses.replace(vector(), amount=123456790),
        dataclasses.replace(vector(), tag=TAG_CLIENT_VOUCHER),  # a signature does not carry to the other channel kind
        dataclasses.replace(vector(), channel=OTHER_CHANNEL),
    ):
        with pytest.raises(VoucherError) as excinfo:
            SignedVoucher(changed, signed.signature).verify(PUBLIC)
        assert code_of(excinfo) == "bad_signature"


def check(previous: SignedVoucher | None, new: Voucher, **overrides: object) -> None:
    args: dict[str, object] = {
        "channel": CHANNEL,
        "tag": TAG_WORKER_VOUCHER,
        "payer_key": PUBLIC,
        "now": NOW,
        "min_validity": 0,
    }
    check_next(previous, new.sign(KEY), **{**args, **overrides})  # type: ignore[arg-type]


def test_check_next_accepts_a_good_sequence() -> None:
    first = voucher(seqno=1, amount=100)
    check(None, first)
    check(first.sign(KEY), voucher(seqno=2, amount=150))
    check(first.sign(KEY), voucher(seqno=10, amount=100))  # seqno gaps and an unchanged amount are fine
    check(None, voucher(expiry=NOW))  # valid while now <= expiry
    check(None, voucher(expiry=NOW + 60), min_validity=60)


@pytest.mark.parametrize(
    ("previous", "new", "overrides", "code"),
    [
        (None, voucher(), {"payer_key": public_bytes(Ed25519PrivateKey.generate())}, "bad_signature"),
        (None, voucher(), {"payer_key": b"short"}, "malformed"),
        (None, voucher(tag=TAG_CLIENT_VOUCHER), {}, "wrong_tag"),
        (None, voucher(channel=OTHER_CHANNEL), {}, "wrong_channel"),
        (None, voucher(expiry=NOW - 1), {}, "expired"),
        (None, voucher(expiry=NOW + 59), {"min_validity": 60}, "expired"),
        (voucher(seqno=5), voucher(seqno=5, amount=200), {}, "stale"),
        (voucher(seqno=5), voucher(seqno=4, amount=200), {}, "stale"),
        (voucher(seqno=5, amount=100), voucher(seqno=6, amount=99), {}, "amount_decreased"),
    ],
)
def test_check_next_refuses(previous: Voucher | None, new: Voucher, overrides: dict[str, object], code: str) -> None:
    with pytest.raises(VoucherError) as excinfo:
        check(previous.sign(KEY) if previous else None, new, **overrides)
    assert code_of(excinfo) == code


def test_check_next_checks_the_signature_first() -> None:
    # a forged voucher reports the forgery, not whatever else is wrong with it
    forged = SignedVoucher(voucher(channel=OTHER_CHANNEL, expiry=0), bytes(64))
    with pytest.raises(VoucherError) as excinfo:
        check_next(None, forged, channel=CHANNEL, tag=TAG_WORKER_VOUCHER, payer_key=PUBLIC, now=NOW)
    assert code_of(excinfo) == "bad_signature"


def test_check_next_channel_length() -> None:
    with pytest.raises(ValueError):
        check(None, voucher(), channel=bytes(20))
