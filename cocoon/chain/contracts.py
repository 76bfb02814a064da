"""The project's contracts as Python sees them: code, initial data, addresses and message bodies.

Pure functions over ``pytoniq_core`` cells; the layouts are those of ``contracts/README.md``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from functools import cache

from pytoniq_core import Address, Builder, Cell, StateInit, begin_cell

from cocoon.chain.errors import ChainError
from cocoon.chain.sandbox import CONTRACTS_DIR

# --- opcodes ---
OP_CHANGE_OWNER = 0xC0C00001
OP_ACCEPT_OWNER = 0xC0C00002
OP_ADD_IMAGE = 0xC0C00003
OP_REMOVE_IMAGE = 0xC0C00004
OP_SET_MODEL = 0xC0C00005
OP_REMOVE_MODEL = 0xC0C00006
OP_SET_PROXY = 0xC0C00007
OP_REMOVE_PROXY = 0xC0C00008
OP_SET_PARAMS = 0xC0C00009
OP_TOP_UP = 0xC0C00101
OP_REDEEM = 0xC0C00102
OP_START_CLOSE = 0xC0C00103
OP_FINISH_CLOSE = 0xC0C00104
OP_COOP_CLOSE = 0xC0C00105
OP_COMMIT = 0xC0C00106
OP_WITHDRAW = 0xC0C00107

ROLE_PROXY = 1
ROLE_WORKER = 2

TON = 10**9
OP_FEE = TON // 100  # kept by a channel from every top-up (contracts/README.md, "Fees")
MIN_GAS = TON // 100  # least value on a message that makes a channel pay out
MAX_COINS = 2**120 - 1

# exit codes → names, for errors people read (contracts/README.md, "Exit codes")
EXIT_CODES = {
    100: "not the registry's owner",
    101: "not the pending owner",
    102: "invalid image role",
    103: "too many registry entries",
    104: "already in the registry",
    105: "not in the registry",
    106: "bad string (1..127 bytes)",
    107: "bad parameters",
    200: "sender is not the channel's payer",
    201: "sender is not the channel's payee",
    202: "bad signature",
    203: "signed for another channel",
    204: "voucher expired",
    205: "stale voucher (seqno not newer)",
    206: "amount below what was already redeemed",
    207: "the channel's balance is too low",
    208: "the channel is closing",
    209: "the channel is not closing",
    210: "the close delay has not passed",
    211: "the channel is closed",
    212: "attached value too low",
    213: "withdrawal would touch the stake",
    214: "stale state commit",
    215: "stake larger than the deposit",
    216: "bad payee signature",
    65535: "unknown operation",
}


@cache
def code(name: str) -> Cell:
    """The compiled code cell of contract ``name`` (``contracts/build/<name>.json``)."""
    path = CONTRACTS_DIR / "build" / f"{name}.json"
    try:
        built = json.loads(path.read_text())
        cell = Cell.one_from_boc(base64.b64decode(built["codeBoc64"]))
    except (OSError, ValueError, KeyError) as exc:
        raise ChainError("no_contract", f"cannot load the compiled contract {path}: {exc}") from exc
    if cell.hash.hex() != built.get("hash"):
        raise ChainError("no_contract", f"{path}: the code does not match its recorded hash")
    return cell


def account_id(address: Address) -> bytes:
    return bytes(address.hash_part)


def address_of(init: StateInit) -> Address:
    return Address((0, init.serialize().hash))


def text_cell(text: str) -> Cell:
    data = text.encode()
    if not 1 <= len(data) <= 127:
        raise ValueError(f"{text!r} must be 1..127 bytes")
    return begin_cell().store_bytes(data).end_cell()


def read_text(cell: Cell) -> str:
    s = cell.begin_parse()
    return bytes(s.load_bytes(s.remaining_bits // 8)).decode(errors="replace")


# --- root (registry) ---


@dataclass(frozen=True)
class RootParams:
    price_per_token: int = 1000  # nanoTON per token before multipliers
    prompt_mult: int = 10000  # 1/10000 units: 10000 = ×1
    cached_mult: int = 10000
    completion_mult: int = 10000
    reasoning_mult: int = 10000
    commission_bps: int = 1000  # the proxy's share, basis points
    min_client_stake: int = TON // 10
    close_delay: int = 3600  # seconds

    def cell(self) -> Cell:
        return (
            begin_cell()
            .store_coins(self.price_per_token)
            .store_uint(self.prompt_mult, 32)
            .store_uint(self.cached_mult, 32)
            .store_uint(self.completion_mult, 32)
            .store_uint(self.reasoning_mult, 32)
            .store_uint(self.commission_bps, 16)
            .store_coins(self.min_client_stake)
            .store_uint(self.close_delay, 32)
            .end_cell()
        )


def root_init(owner: Address, params: RootParams, nonce: int = 0) -> StateInit:
    """A fresh registry owned by ``owner``. ``nonce`` (the initial version) lets one owner
    deploy several registries; every change increments it."""
    images = begin_cell().store_bit(0).store_bit(0).end_cell()
    data = (
        begin_cell()
        .store_address(owner)
        .store_uint(0, 2)  # no pending owner
        .store_uint(nonce, 32)
        .store_uint(0, 16)
        .store_uint(0, 16)
        .store_uint(0, 16)
        .store_uint(0, 16)
        .store_ref(params.cell())
        .store_ref(images)
        .store_bit(0)
        .store_bit(0)
        .end_cell()
    )
    return StateInit(code=code("root"), data=data)


def _op(op: int, query_id: int) -> Builder:
    return begin_cell().store_uint(op, 32).store_uint(query_id, 64)


def add_image(role: int, image_hash: bytes, query_id: int = 0) -> Cell:
    return _op(OP_ADD_IMAGE, query_id).store_uint(role, 8).store_bytes(_hash32(image_hash)).end_cell()


def remove_image(role: int, image_hash: bytes, query_id: int = 0) -> Cell:
    return _op(OP_REMOVE_IMAGE, query_id).store_uint(role, 8).store_bytes(_hash32(image_hash)).end_cell()


def set_model(model_hash: bytes, name: str, query_id: int = 0) -> Cell:
    return _op(OP_SET_MODEL, query_id).store_bytes(_hash32(model_hash)).store_ref(text_cell(name)).end_cell()


def remove_model(model_hash: bytes, query_id: int = 0) -> Cell:
    return _op(OP_REMOVE_MODEL, query_id).store_bytes(_hash32(model_hash)).end_cell()


def set_proxy(public_key: bytes, endpoint: str, query_id: int = 0) -> Cell:
    return _op(OP_SET_PROXY, query_id).store_bytes(_hash32(public_key)).store_ref(text_cell(endpoint)).end_cell()


def remove_proxy(public_key: bytes, query_id: int = 0) -> Cell:
    return _op(OP_REMOVE_PROXY, query_id).store_bytes(_hash32(public_key)).end_cell()


def set_params(params: RootParams, query_id: int = 0) -> Cell:
    return _op(OP_SET_PARAMS, query_id).store_ref(params.cell()).end_cell()


def _hash32(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError("hashes and keys are 32 bytes")
    return value


# --- channels ---


def client_channel_init(
    *, root: Address, client: Address, proxy: Address, close_delay: int, client_key: bytes, proxy_key: bytes
) -> StateInit:
    params = begin_cell().store_address(root).store_address(client).store_address(proxy)
    keys = begin_cell().store_bytes(_hash32(client_key)).store_bytes(_hash32(proxy_key)).end_cell()
    data = (
        begin_cell()
        .store_ref(params.store_uint(close_delay, 32).end_cell())
        .store_ref(keys)
        .store_coins(0)
        .store_coins(0)
        .store_coins(0)
        .store_uint(0, 64)
        .store_uint(0, 32)
        .end_cell()
    )
    return StateInit(code=code("client_channel"), data=data)


def worker_channel_init(
    *, root: Address, proxy: Address, worker: Address, close_delay: int, proxy_key: bytes, worker_key: bytes
) -> StateInit:
    params = begin_cell().store_address(root).store_address(proxy).store_address(worker)
    keys = begin_cell().store_bytes(_hash32(proxy_key)).store_bytes(_hash32(worker_key)).end_cell()
    data = (
        begin_cell()
        .store_ref(params.store_uint(close_delay, 32).end_cell())
        .store_ref(keys)
        .store_coins(0)
        .store_coins(0)
        .store_uint(0, 64)
        .store_uint(0, 32)
        .store_uint(0, 64)
        .store_uint(0, 256)
        .end_cell()
    )
    return StateInit(code=code("worker_channel"), data=data)


def top_up(stake: int | None = None, query_id: int = 0) -> Cell:
    """Deposit into a channel; ``stake`` (client channels only) is added to the locked stake."""
    body = _op(OP_TOP_UP, query_id)
    if stake is not None:
        body.store_coins(stake)
    return body.end_cell()


def redeem(signature: bytes, voucher: Cell, query_id: int = 0) -> Cell:
    return _op(OP_REDEEM, query_id).store_bytes(signature).store_ref(voucher).end_cell()


def withdraw(amount: int, query_id: int = 0) -> Cell:
    return _op(OP_WITHDRAW, query_id).store_coins(amount).end_cell()


def start_close(query_id: int = 0) -> Cell:
    return _op(OP_START_CLOSE, query_id).end_cell()


def finish_close(query_id: int = 0) -> Cell:
    return _op(OP_FINISH_CLOSE, query_id).end_cell()


def commit(signature: bytes, state: Cell, query_id: int = 0) -> Cell:
    return _op(OP_COMMIT, query_id).store_bytes(signature).store_ref(state).end_cell()
