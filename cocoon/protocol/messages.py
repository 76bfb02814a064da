"""Typed wire messages (msgspec structs, msgpack encoded, tagged by the field ``t``).

Fields are bounded at decode time, so a peer cannot make us allocate or loop without limit.
New optional fields may be added with defaults; unknown fields from newer peers are ignored.
An incompatible change bumps ``PROTOCOL_VERSION`` in the frame header instead.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

MAX_BODY = 8 * 1024 * 1024
"""Largest request body or answer payload a single message may carry."""

StreamId = Annotated[int, Meta(ge=1, le=2**62)]
Name = Annotated[str, Meta(min_length=1, max_length=256)]
Text = Annotated[str, Meta(max_length=4096)]
Count = Annotated[int, Meta(ge=0, le=2**40)]
Blob = Annotated[bytes, Meta(max_length=MAX_BODY)]
Key = Annotated[bytes, Meta(min_length=32, max_length=32)]
Signature = Annotated[bytes, Meta(min_length=64, max_length=64)]
Nonce = Annotated[bytes, Meta(min_length=16, max_length=64)]
Nano = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # nanoTON (more than all TON there is)
AccountId = Annotated[bytes, Meta(min_length=32, max_length=32)]  # a workchain-0 account
RequestId = Annotated[bytes, Meta(max_length=16)]
Role = Literal["client", "proxy", "worker"]
Kind = Literal["chat", "completion"]


class _Message(Struct, tag_field="t", forbid_unknown_fields=False, frozen=True, omit_defaults=True):
    pass


# --- handshake (inside the TLS channel) ------------------------------------------------------


class Challenge(_Message, tag="challenge", frozen=True):
    """Listener → dialer, first frame: a fresh nonce the dialer must sign."""

    nonce: Nonce
    software: Text = ""


class Hello(_Message, tag="hello", frozen=True):
    """Dialer → listener: who I am, proven by a signature over the challenge and the
    listener's TLS certificate (so the proof cannot be relayed to another server)."""

    role: Role
    public_key: Key
    signature: Signature
    software: Text = ""
    evidence: Blob = b""  # attestation evidence; empty until the attestation layer fills it


class Welcome(_Message, tag="welcome", frozen=True):
    """Listener → dialer: the dialer is accepted; the connection is open."""

    role: Role
    software: Text = ""


# --- connection level -------------------------------------------------------------------------


class Announce(_Message, tag="announce", frozen=True):
    """Worker → proxy: what this worker serves. May be sent again to update it."""

    model: Name
    engine: Name
    capacity: Annotated[int, Meta(ge=1, le=4096)]
    price_milli: Annotated[int, Meta(ge=0, le=10**9)] = 1000  # price coefficient × 1000
    max_tokens: Annotated[int, Meta(ge=1, le=2**31)] = 2048  # longest answer it can produce
    wallet: Annotated[bytes, Meta(max_length=32)] = b""  # account id the proxy pays (with a chain)
    paid_seqno: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0  # newest payout voucher held from this proxy


class Capacity(_Message, tag="capacity", frozen=True):
    """Worker → proxy: how many requests this worker takes from this proxy now, never more than
    it announced. A worker serving several proxies sends it when it becomes full (each proxy is
    told the requests it holds there: no room) and when it has room again (its whole capacity)."""

    capacity: Annotated[int, Meta(ge=0, le=4096)]


class Ping(_Message, tag="ping", frozen=True):
    nonce: Count


class Pong(_Message, tag="pong", frozen=True):
    nonce: Count


class Voucher(_Message, tag="voucher", frozen=True):
    """Payer → payee: a signed cumulative voucher for a payment channel (client → proxy after
    each verified answer; proxy → worker after each billed answer). The payee checks that the
    channel is the one its own parameters and ``payer_wallet`` / ``close_delay`` derive."""

    channel: AccountId
    seqno: Annotated[int, Meta(ge=1, le=2**63 - 1)]
    amount: Nano
    expiry: Annotated[int, Meta(ge=0, le=2**32 - 1)]
    signature: Signature
    payer_wallet: Annotated[bytes, Meta(max_length=32)] = b""
    close_delay: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 0


class Goodbye(_Message, tag="goodbye", frozen=True):
    """Graceful close: the sender finishes open streams but takes no new ones."""

    reason: Text = ""


# --- streams ------------------------------------------------------------------------------------


MAX_AWAITING = 1024  # requests one client connection may have waiting for their end


class Open(_Message, tag="open", frozen=True):
    """Opener → responder: one inference request. The proxy routes on the clear fields only;
    ``body`` is the sealed request (``cocoon.seal.request``), which it cannot open."""

    stream_id: StreamId
    model: Name
    kind: Kind
    stream: bool
    max_tokens: Count  # 0 = the serving worker's default
    body: Blob
    request_id: Annotated[bytes, Meta(max_length=16)] = b""
    candidates: Annotated[list[Key], Meta(max_length=8)] = []  # worker ids the body is sealed for
    max_price_milli: Count = 0  # the client's price cap (price coefficient × 1000); 0 = none
    routing: Annotated[str, Meta(max_length=16)] = ""  # "balanced" (default), "cheapest" or "fastest"
    # requests of this client still waiting for their end: with payments on, every other answer
    # it was given must be covered by a voucher before this one is served
    awaiting: Annotated[list[RequestId], Meta(max_length=MAX_AWAITING)] = []


class PayAccount(_Message, tag="pay_account", frozen=True):
    """Client → proxy: pay for this connection's requests from the channel between my wallet and
    yours. Answered by ``PayTerms`` (or an error when the proxy takes no payments)."""

    stream_id: StreamId
    wallet: AccountId
    # my newest voucher on this channel (seqno 0: none): one the proxy never received is accepted
    # from here, and what it billed beyond it never reached me
    last_seqno: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    last_amount: Nano = 0
    last_expiry: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 0
    last_signature: Annotated[bytes, Meta(max_length=64)] = b""


class PayTerms(_Message, tag="pay_terms", frozen=True):
    """Proxy → client: what the channel must be and where its accounts stand."""

    stream_id: StreamId
    root: AccountId
    proxy_wallet: AccountId
    close_delay: Annotated[int, Meta(ge=0, le=2**32 - 1)]
    channel: AccountId
    min_stake: Nano
    exists: bool = False
    balance: Nano = 0
    stake: Nano = 0
    redeemed: Nano = 0
    charged: Nano = 0  # everything billed to this channel so far
    paid: Nano = 0  # the newest voucher's amount
    seqno: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0


class ListWorkers(_Message, tag="list_workers", frozen=True):
    """Client → proxy: the live workers for a model, with their evidence, to seal to."""

    stream_id: StreamId
    model: Name


MAX_TOKENS_PER_SECOND = 1e9  # a measured speed a worker list carries at most


class WorkerOffer(Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    worker_id: Key  # the worker's channel key
    evidence: Blob
    capacity: Count
    inflight: Count
    price_milli: Count
    # as the proxy measured it (0 = not measured yet)
    ttft_ms: Count = 0
    tokens_per_second: Annotated[float, Meta(ge=0, le=MAX_TOKENS_PER_SECOND)] = 0.0
    success_rate: Annotated[float, Meta(ge=0, le=1)] = 1.0
    errors: Count = 0
    timeouts: Count = 0
    suspended_until: Annotated[int, Meta(ge=0, le=2**40)] = 0  # unix time; the proxy routes nothing to it before
    banned: bool = False  # it signed usage that did not match its answer


MAX_WORKER_OFFERS = 256  # workers one list names at most (the least loaded)


class WorkerList(_Message, tag="worker_list", frozen=True):
    stream_id: StreamId
    workers: Annotated[list[WorkerOffer], Meta(max_length=MAX_WORKER_OFFERS)]


class ListModels(_Message, tag="list_models", frozen=True):
    stream_id: StreamId


class ModelInfo(Struct, frozen=True, forbid_unknown_fields=False):
    id: Name
    workers: Count
    capacity: Count
    max_tokens: Count = 0


class Prices(Struct, frozen=True, forbid_unknown_fields=False):
    """The network's price parameters (from the registry once the chain issue lands)."""

    nano_per_token: Count  # nanoTON per token at coefficient 1.0, before multipliers
    prompt_milli: Count = 1000  # multipliers per token kind, × 1000
    cached_milli: Count = 1000
    completion_milli: Count = 1000
    reasoning_milli: Count = 1000
    commission_milli: Count = 0  # the proxy's share of each payment, × 1000


MAX_MODELS = 1024  # models one model list names at most


class ModelList(_Message, tag="model_list", frozen=True):
    stream_id: StreamId
    models: Annotated[list[ModelInfo], Meta(max_length=MAX_MODELS)]
    prices: Prices | None = None


class Data(_Message, tag="data", frozen=True):
    """Responder → opener: one piece of the answer (a JSON chunk, sealed in a later layer)."""

    stream_id: StreamId
    payload: Blob


class Usage(Struct, frozen=True, forbid_unknown_fields=False):
    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    cached_tokens: Count = 0
    reasoning_tokens: Count = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class End(_Message, tag="end", frozen=True):
    """Responder → opener: the answer is complete; usage as metered by the worker."""

    stream_id: StreamId
    usage: Usage
    finish_reason: Annotated[str, Meta(max_length=64)] | None = None
    receipt: Annotated[bytes, Meta(max_length=2048)] = b""  # the worker-signed usage record
    cost: Nano = 0  # what the proxy billed for it, nanoTON (0 without payments)


class Cancel(_Message, tag="cancel", frozen=True):
    """Opener → responder: stop working on this stream (the caller went away)."""

    stream_id: StreamId
    reason: Text = ""


class Error(_Message, tag="error", frozen=True):
    """A typed error. ``stream_id`` 0 means the whole connection, which then closes."""

    stream_id: Annotated[int, Meta(ge=0, le=2**62)]
    code: Annotated[str, Meta(max_length=64)]
    message: Text = ""


Message = (
    Challenge
    | Hello
    | Welcome
    | Announce
    | Capacity
    | Ping
    | Pong
    | Goodbye
    | Voucher
    | Open
    | ListModels
    | ListWorkers
    | PayAccount
    | PayTerms
    | WorkerList
    | ModelList
    | Data
    | End
    | Cancel
    | Error
)

StreamRequest = Open | ListModels | ListWorkers | PayAccount
"""A message that opens a stream."""

OPENER_MESSAGES = (Open, ListModels, ListWorkers, PayAccount, Cancel)
"""Stream messages sent by the side that opened the stream."""
RESPONDER_MESSAGES = (Data, End, ModelList, WorkerList, PayTerms, Error)
"""Stream messages sent by the side that answers the stream."""
STREAM_OPENING = (Open, ListModels, ListWorkers, PayAccount)
STREAM_CLOSING = (End, ModelList, WorkerList, PayTerms, Error, Cancel)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode_message(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_message(data: bytes) -> Message:
    """Decode one message; raises ``msgspec.DecodeError`` or ``msgspec.ValidationError``."""
    try:
        message: Message = _decoder.decode(data)
    except RecursionError as exc:  # a deeply nested (ignored) field: peer input, not our bug
        raise msgspec.DecodeError("message is nested too deeply") from exc
    return message
