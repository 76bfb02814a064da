"""A client topping up its channel while its connection to the proxy is renewed: the deposit
takes seconds, and the connection it asked on may have closed by then."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from cocoon.client.payments import PaymentSetupError
from cocoon.client.service import ClientService, UpstreamError
from cocoon.protocol.errors import ErrorCode


@dataclass
class PeerStub:
    closed: bool = False


class LinkStub:
    """Test double: the link's current connection, and where the channel was named."""

    def __init__(self, peer: PeerStub) -> None:
        self.peer: PeerStub | None = peer
        self.named: tuple[PeerStub, str] | None = None

    async def get(self) -> PeerStub:
        assert self.peer is not None
        return self.peer

    def set_payment(self, peer: PeerStub, channel: str) -> None:
        self.named = (peer, channel)


class RenewingDuringDepositPaymentsStub:
    """Test double: the first ``attach`` deposits, and meanwhile the link renews its connection
    (the old one closes), so naming the channel on the old one fails."""

    def __init__(self, link: LinkStub, fresh: PeerStub | None) -> None:
        self.link, self.fresh, self.calls = link, fresh, 0

    async def attach(self, peer: PeerStub) -> str:
        self.calls += 1
        if self.calls == 1:
            peer.closed = True
            if self.fresh is not None:
                self.link.peer = self.fresh
            raise PaymentSetupError("the proxy did not answer about payment: closed")
        return "channel"


def service(payments: RenewingDuringDepositPaymentsStub) -> ClientService:
    client = ClientService.__new__(ClientService)  # only the top-up is exercised
    client.payments = payments  # type: ignore[assignment]
    return client


async def test_the_channel_is_named_on_the_fresh_connection_after_a_renewal() -> None:
    old, fresh = PeerStub(), PeerStub()
    link = LinkStub(old)
    await service(RenewingDuringDepositPaymentsStub(link, fresh))._top_up(link)  # type: ignore[arg-type]
    assert link.named == (fresh, "channel")


async def test_a_connection_lost_without_a_fresh_one_is_still_a_payment_error() -> None:
    link = LinkStub(PeerStub())
    with pytest.raises(UpstreamError) as refused:
        await service(RenewingDuringDepositPaymentsStub(link, None))._top_up(link)  # type: ignore[arg-type]
    assert refused.value.code == ErrorCode.PAYMENT_REQUIRED and link.named is None


def test_a_client_that_makes_no_deposit_still_names_its_channel_again_on_a_402() -> None:
    """Its channel may have been funded by hand since (``cocoon wallet topup``): named again, the
    proxy sees the deposit at once, and a proxy that forgot it (a channel named with nothing in
    it, among many) knows it again."""
    link = SimpleNamespace(connected=True)
    client = ClientService.__new__(ClientService)
    client.payments = SimpleNamespace(deposit=0)  # type: ignore[assignment]
    assert client._can_top_up(link)  # type: ignore[arg-type]
    link.connected = False
    assert not client._can_top_up(link)  # type: ignore[arg-type]
    client.payments = None
    assert not client._can_top_up(SimpleNamespace(connected=True))  # type: ignore[arg-type]  # nothing to pay
