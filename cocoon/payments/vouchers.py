"""The cells that the channel contracts verify (contracts/README.md, "Signed data"), and their signatures.

Every signature is Ed25519 over the 32-byte representation hash of one cell. A channel is named by
the 32-byte account id of its contract; the workchain is always 0 in this project, so the cells
hold the address ``0:<channel>``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pytoniq_core import Address, Builder, Cell

from cocoon.seal import ed25519

TAG_CLIENT_VOUCHER = 0x43505631  # "CPV1": client → proxy, signed by the client key
TAG_WORKER_VOUCHER = 0x50575631  # "PWV1": proxy → worker, signed by the proxy key
TAG_COOP_CLOSE = 0x43434C31  # "CCL1": signed by both keys of the channel
TAG_COMMIT = 0x434D5431  # "CMT1": worker channel state commit, signed by the proxy key
VOUCHER_TAGS = (TAG_CLIENT_VOUCHER, TAG_WORKER_VOUCHER)

OP_REDEEM = 0xC0C00102
WORKCHAIN = 0
MAX_COINS = 2**120 - 1
MAX_UINT32 = 2**32 - 1
MAX_UINT64 = 2**64 - 1
SIGNATURE_SIZE = 64


class VoucherError(Exception):
    """A voucher or signature was refused; ``code`` says why (``bad_signature``, ``stale``, …)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {super().__str__()}"


def _check_channel(channel: bytes) -> None:
    if len(channel) != 32:
        raise ValueError(f"channel must be a 32-byte account id, got {len(channel)} bytes")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} {value} is outside {low}..{high}")


def _begin(tag: int, channel: bytes) -> Builder:
    # Statements rather than a chain: pytoniq-core's store_* methods have no return annotation.
    builder = Builder()
    builder.store_uint(tag, 32)
    builder.store_address(Address((WORKCHAIN, channel)))
    return builder


@dataclass(frozen=True)
class Voucher:
    """A cumulative promise: the payer owes the channel's payee ``amount`` nanoTON in total."""

    tag: int  # TAG_CLIENT_VOUCHER or TAG_WORKER_VOUCHER
    channel: bytes  # account id of the channel contract (workchain 0)
    seqno: int  # 1..2^64-1, strictly increasing per channel
    amount: int  # cumulative nanoTON, 0..2^120-1
    expiry: int  # unix time; valid while now <= expiry

    def __post_init__(self) -> None:
        if self.tag not in VOUCHER_TAGS:
            raise ValueError(f"tag {self.tag:#x} is not a voucher tag")
        _check_channel(self.channel)
        _check_range("seqno", self.seqno, 1, MAX_UINT64)
        _check_range("amount", self.amount, 0, MAX_COINS)
        _check_range("expiry", self.expiry, 0, MAX_UINT32)

    def cell(self) -> Cell:
        """``tag:uint32 channel:addr_std seqno:uint64 amount:coins expiry:uint32``, no refs."""
        builder = _begin(self.tag, self.channel)
        builder.store_uint(self.seqno, 64)
        builder.store_coins(self.amount)
        builder.store_uint(self.expiry, 32)
        return builder.end_cell()

    def hash(self) -> bytes:
        """The representation hash of ``cell()``: what is signed. Computed from the fields
        directly (a voucher is one cell without references) because building the cell with
        pytoniq costs more than the signature on the proxy's per-request path; the tests hold
        it equal to ``cell_hash(self.cell())``."""
        coins_bytes = (self.amount.bit_length() + 7) // 8
        bits = (self.tag << 2) | 0b10  # addr_std$10
        bits = (bits << 9) | (WORKCHAIN & 0xFF)  # anycast:(Maybe Anycast) = 0, workchain_id:int8
        bits = (bits << 256) | int.from_bytes(self.channel, "big")
        bits = (bits << 64) | self.seqno
        bits = (bits << 4) | coins_bytes  # Coins = VarUInteger 16: the length in bytes, then the value
        bits = (bits << (8 * coins_bytes)) | self.amount
        bits = (bits << 32) | self.expiry
        # 399 + 8n bits, never whole bytes: the completion tag (one 1 bit) makes them 400 + 8n
        size = 50 + coins_bytes
        descriptors = bytes((0, 2 * size - 1))  # no references, ordinary, level 0; then the data length
        return hashlib.sha256(descriptors + ((bits << 1) | 1).to_bytes(size, "big")).digest()

    def sign(self, key: Ed25519PrivateKey) -> SignedVoucher:
        return SignedVoucher(self, key.sign(self.hash()))


@dataclass(frozen=True)
class SignedVoucher:
    voucher: Voucher
    signature: bytes  # Ed25519 over voucher.hash()

    def __post_init__(self) -> None:
        if len(self.signature) != SIGNATURE_SIZE:
            raise VoucherError("malformed", f"a signature is 64 bytes, got {len(self.signature)}")

    def verify(self, public_key: bytes) -> None:
        """Return if ``public_key`` signed the voucher; raise ``VoucherError`` otherwise."""
        if len(public_key) != 32:
            raise VoucherError("malformed", "a public key is 32 bytes")
        if not ed25519.verify(public_key, self.signature, self.voucher.hash()):
            raise VoucherError("bad_signature", "the signature does not verify")


def check_next(
    previous: SignedVoucher | None,
    new: SignedVoucher,
    *,
    channel: bytes,
    tag: int,
    payer_key: bytes,
    now: int,
    min_validity: int = 0,
) -> None:
    """What a payee checks before accepting ``new`` after ``previous`` (None: the first one).

    The order follows the contract's Redeem: signature, tag, channel, expiry, seqno, amount.
    ``min_validity`` leaves the payee time to redeem before the voucher expires.
    """
    _check_channel(channel)
    new.verify(payer_key)
    voucher = new.voucher
    if voucher.tag != tag:
        raise VoucherError("wrong_tag", f"voucher tag {voucher.tag:#x}, expected {tag:#x}")
    if voucher.channel != channel:
        raise VoucherError("wrong_channel", "the voucher names another channel")
    if voucher.expiry < now + min_validity:
        raise VoucherError("expired", f"voucher expires at {voucher.expiry}, needed at least {now + min_validity}")
    if previous is not None:
        if voucher.seqno <= previous.voucher.seqno:
            raise VoucherError("stale", f"seqno {voucher.seqno} is not above {previous.voucher.seqno}")
        if voucher.amount < previous.voucher.amount:
            raise VoucherError("amount_decreased", f"amount {voucher.amount} is below {previous.voucher.amount}")


def coop_close_cell(channel: bytes, seqno: int, payee_total: int) -> Cell:
    """``tag:uint32 channel:addr_std seqno:uint64 payee_total:coins``; both channel keys sign it."""
    _check_channel(channel)
    _check_range("seqno", seqno, 1, MAX_UINT64)
    _check_range("payee_total", payee_total, 0, MAX_COINS)
    builder = _begin(TAG_COOP_CLOSE, channel)
    builder.store_uint(seqno, 64)
    builder.store_coins(payee_total)
    return builder.end_cell()


def commit_cell(channel: bytes, seq: int, state_hash: bytes) -> Cell:
    """``tag:uint32 channel:addr_std seq:uint64 hash:uint256``; the proxy key signs it."""
    _check_channel(channel)
    _check_range("seq", seq, 1, MAX_UINT64)
    if len(state_hash) != 32:
        raise ValueError(f"state_hash must be 32 bytes, got {len(state_hash)}")
    builder = _begin(TAG_COMMIT, channel)
    builder.store_uint(seq, 64)
    builder.store_bytes(state_hash)
    return builder.end_cell()


def cell_hash(cell: Cell) -> bytes:
    """The cell's 32-byte representation hash (``cell.hash``, typed)."""
    # bytes(): pytoniq-core is seen as Any by our mypy configuration; this pins the type.
    return bytes(cell.hash)


def sign_cell(cell: Cell, key: Ed25519PrivateKey) -> bytes:
    """Ed25519 over the cell's representation hash, as CHKSIGNU checks it."""
    return key.sign(cell_hash(cell))


def verify_cell(cell: Cell, signature: bytes, public_key: bytes) -> None:
    """Raise ``VoucherError`` unless ``public_key`` signed ``cell`` (``sign_cell``)."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != 32:
        raise VoucherError("malformed", "a signature is 64 bytes and a public key 32")
    if not ed25519.verify(public_key, signature, cell_hash(cell)):
        raise VoucherError("bad_signature", "the signature does not verify")


def redeem_body(signed: SignedVoucher, query_id: int) -> Cell:
    """The Redeem message body: ``op:uint32 query_id:uint64 signature:bits512 voucher:^Voucher``."""
    _check_range("query_id", query_id, 0, MAX_UINT64)
    builder = Builder()
    builder.store_uint(OP_REDEEM, 32)
    builder.store_uint(query_id, 64)
    builder.store_bytes(signed.signature)
    builder.store_ref(signed.voucher.cell())
    return builder.end_cell()
