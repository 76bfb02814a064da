"""Payments in the running network: real proxy, workers and client paying through the real
contracts on the local chain service (TON sandbox in Node)."""

from __future__ import annotations

import asyncio
import itertools
import re
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cocoon.chain import contracts as c
from cocoon.chain.access import parse_address
from cocoon.chain.channels import Channel
from cocoon.chain.registry import RegistryAdmin
from cocoon.chain.sandbox import SandboxLedger
from cocoon.chain.wallet import Wallet
from cocoon.keys import load_or_create_identity
from cocoon.payments.prices import PriceParams, request_cost, split
from cocoon.up_chain import UP_PARAMS, wallet_key
from tests.integration.network import MODEL, Chain, Network, stream_until

pytestmark = pytest.mark.integration

PRICES = PriceParams(
    UP_PARAMS.price_per_token,
    UP_PARAMS.prompt_mult,
    UP_PARAMS.cached_mult,
    UP_PARAMS.completion_mult,
    UP_PARAMS.reasoning_mult,
    UP_PARAMS.commission_bps,
)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    local = Chain(Path(tmp_path_factory.mktemp("chain")))
    try:
        yield local
    finally:
        local.stop()


def rows(db: Path, role: str) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM channels WHERE role = ?", (role,))]
    finally:
        conn.close()


def ask(net: Network, prompt: str, *, stream: bool, max_tokens: int = 12) -> None:
    messages: Any = [{"role": "user", "content": prompt}]
    with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0) as api:
        if stream:
            chunks = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, stream=True)
            assert list(chunks)
        else:
            answer = api.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)
            assert answer.usage is not None and answer.usage.completion_tokens > 0


def receipts(net: Network) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(net.url + "/cocoon/receipts?limit=1000", timeout=5).json()["data"]
    return data


def chain_state(url: str, kind: str, channel: bytes) -> Any:
    async def read() -> Any:
        ledger = SandboxLedger(url)
        try:
            return await Channel.at(ledger, kind, channel).state()
        finally:
            await ledger.aclose()

    return asyncio.run(read())


def wait_until(check: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def at_list_price(receipt: dict[str, Any]) -> int:
    """A receipt's cost by the formula, at the registry's first prices and coefficient ×1."""
    return request_cost(
        PRICES,
        prompt_tokens=receipt["prompt_tokens"],
        cached_tokens=receipt["cached_tokens"],
        completion_tokens=receipt["completion_tokens"],
        reasoning_tokens=receipt["reasoning_tokens"],
        price_milli=1000,
    )


def change_registry(chain: Chain, net: Network, change: Callable[[RegistryAdmin], Awaitable[None]]) -> None:
    """One change to the network's registry, sent from its owner's wallet."""

    async def send() -> None:
        ledger = SandboxLedger(chain.url)
        owner = Wallet(ledger, load_or_create_identity(wallet_key(net.root, "owner")))
        try:
            await change(RegistryAdmin(owner, parse_address(net.root_address)))
        finally:
            await ledger.aclose()

    asyncio.run(send())


def test_every_token_is_paid_exactly_once_and_the_shares_add_up(chain: Chain, tmp_path: Path) -> None:
    settle = {"settle_on_exit": True}
    net = Network(tmp_path / "net", workers=2, chain=chain, proxy=settle, worker=settle)
    try:
        for i in range(4):
            ask(net, f"Count to {i + 3}.", stream=i % 2 == 0)
        paid = receipts(net)
        assert len(paid) == 4
        costs = []
        for r in paid:  # each cost follows from the worker-signed usage record, at coefficient ×1
            expected = at_list_price(r)
            assert r["cost_nanoton"] == expected > 0
            costs.append(expected)
        total = sum(costs)
        worker_total = sum(split(cost, PRICES.commission_bps)[1] for cost in costs)

        (client,) = rows(net.root / "client-payments.db", "client")
        assert client["total"] == client["amount"] == total  # the client signed for exactly that
        assert client["seqno"] == 4
        wait_until(lambda: rows(net.root / "proxy-payments.db", "proxy_in")[0]["amount"] == total, what="voucher")
        (proxy_in,) = rows(net.root / "proxy-payments.db", "proxy_in")
        assert proxy_in["total"] == total
        proxy_out = rows(net.root / "proxy-payments.db", "proxy_out")
        assert sum(r["amount"] for r in proxy_out) == worker_total
        earned = [r for i in (1, 2) for r in rows(net.root / f"worker-{i}-payments.db", "worker")]
        assert sum(r["amount"] for r in earned) == worker_total
        assert total - worker_total == sum(split(cost, PRICES.commission_bps)[0] for cost in costs)

        # settlement: the proxy redeems the client's voucher and the workers theirs, on chain
        net.stop()
        assert chain_state(chain.url, "client", client["channel"]).redeemed == total
        for row in earned:
            assert chain_state(chain.url, "worker", row["channel"]).redeemed == row["amount"]
    finally:
        net.stop()


def client_channel(net: Network, chain: Chain) -> Channel:
    """The client→proxy channel of ``net``, as the client derives it."""
    from cocoon.keys import public_bytes

    ledger = SandboxLedger(chain.url)
    client = Wallet(ledger, load_or_create_identity(wallet_key(net.root, "client")))
    proxy = Wallet(ledger, load_or_create_identity(wallet_key(net.root, "proxy")))
    return Channel.client(
        ledger,
        root=parse_address(net.root_address),
        client=client.address,
        proxy=proxy.address,
        close_delay=UP_PARAMS.close_delay,
        client_key=public_bytes(load_or_create_identity(net.root / "client.key")),
        proxy_key=bytes.fromhex(net.proxy_key),
    )


def deposit(net: Network, chain: Chain, amount: int, stake: int) -> None:
    async def run() -> None:
        channel = client_channel(net, chain)
        wallet = Wallet(channel.ledger, load_or_create_identity(wallet_key(net.root, "client")))
        try:
            await channel.top_up(wallet, amount, stake)
        finally:
            await channel.ledger.aclose()

    asyncio.run(run())


def refused(net: Network) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        ask(net, "Hello", stream=False)
    return caught.value


def test_a_client_whose_deposit_is_used_up_is_refused_until_it_tops_up(chain: Chain, tmp_path: Path) -> None:
    # 0.01 TON per token: one short answer costs about half a TON
    dear = c.RootParams(**{**UP_PARAMS.__dict__, "price_per_token": 10**7})
    net = Network(tmp_path / "net", workers=1, chain=chain, chain_params=dear, client={"deposit": 0})
    try:
        error = refused(net)  # no deposit yet
        assert error.status_code == 402 and "deposit" in error.message
        deposit(net, chain, c.TON + c.TON // 20, c.TON)  # 1.04 TON in the channel, 1 TON of it stake
        wait_until(lambda: _served(net), what="the proxy to see the deposit")
        while _served(net):
            pass  # spend it
        error = refused(net)
        assert error.status_code == 402
        assert "top up" in error.message and error.code == "payment_required"
        # redeeming what it paid took the stake down with the balance: the top-up restores it
        deposit(net, chain, 5 * c.TON, c.TON)
        wait_until(lambda: _served(net), what="the proxy to see the top-up")
    finally:
        net.stop()


def _voucher_seqno(net: Network) -> int:
    """The sequence number of the newest voucher in the proxy's books (0: none)."""
    return max((row["seqno"] for row in rows(net.root / "proxy-payments.db", "proxy_in")), default=0)


def _served(net: Network) -> bool:
    try:
        ask(net, "Hello", stream=False, max_tokens=4)
    except openai.APIStatusError as exc:
        assert exc.status_code == 402, exc
        return False
    return True


def test_a_client_that_stops_signing_vouchers_is_cut_off_within_one_request(chain: Chain, tmp_path: Path) -> None:
    net = Network(tmp_path / "net", workers=1, chain=chain, client_module="tests.integration.unpaying_client")
    try:
        ask(net, "Hello", stream=True)  # answered: the client verifies it, and then does not pay
        error = refused(net)
        assert error.status_code == 402 and "not covered by a voucher" in error.message
        (row,) = rows(net.root / "proxy-payments.db", "proxy_in")
        assert row["amount"] == 0 and row["total"] > 0  # what it owes is one answer's cost
    finally:
        net.stop()


def test_a_client_that_never_pays_and_reattaches_gets_answers_written_off_only_up_to_its_stake(
    chain: Chain, tmp_path: Path
) -> None:
    # Each reattach writes off what the client was billed beyond its newest voucher (the proxy
    # cannot tell a broken connection from a client that breaks off before every answer's end).
    # 0.01 TON per token: one short answer costs a third to a half of a TON; the stake is 1 TON.
    dear = c.RootParams(**{**UP_PARAMS.__dict__, "price_per_token": 10**7})
    net = Network(
        tmp_path / "net", workers=1, chain=chain, chain_params=dear, client_module="tests.integration.unpaying_client"
    )
    try:
        written_off = [0]  # on the client's channel, after each reattach
        while _served(net):
            assert len(written_off) <= 4, "the written-off answers never reached the stake"
            net.nodes["client"].stop()
            net.start_client()  # a new connection: the proxy writes off the unpaid answer
            net.wait_workers(1)  # the client lists workers once it has attached
            written_off.append(_written_off(net))
        error = refused(net)
        assert error.status_code == 402 and "written off" in error.message and "stake" in error.message
        # served while what was written off stayed below the 1 TON stake, refused once it reached it
        assert len(written_off) >= 3 and written_off[-2] < c.TON <= written_off[-1]
        assert all(a < b for a, b in itertools.pairwise(written_off))
    finally:
        net.stop()


def _written_off(net: Network) -> int:
    """What the proxy wrote off on the client's channel, ever."""
    conn = sqlite3.connect(f"file:{net.root / 'proxy-payments.db'}?mode=ro", uri=True)
    try:
        found = conn.execute("SELECT value FROM meta WHERE key LIKE 'written_off:%'").fetchone()
    finally:
        conn.close()
    return int(found[0]) if found else 0


def test_a_proxy_killed_mid_stream_loses_no_voucher_and_charges_nothing_twice(chain: Chain, tmp_path: Path) -> None:
    net = Network(tmp_path / "net", workers=1, chain=chain, worker={"reconnect_max": 1.0})
    try:
        ask(net, "Hello", stream=True)
        with openai.OpenAI(base_url=net.url, api_key="unused", max_retries=0) as api:
            stream = api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell a long story."}],
                max_tokens=400,
                stream=True,
                temperature=0,  # (greedy: no early end, whatever the seed)
            )
            with pytest.raises(openai.APIError):
                for n, _ in enumerate(stream):
                    if n == 3:
                        net.nodes["proxy"].kill()  # SIGKILL: no chance to save anything more
        net.start_proxy()
        net.wait_workers(1)
        wait_until(lambda: _served(net), what="the restarted proxy to serve")
        ask(net, "Hello again", stream=False)

        paid = receipts(net)  # what the client received and verified: three answers
        assert len(paid) == 3
        delivered = sum(r["cost_nanoton"] for r in paid)
        (client,) = rows(net.root / "client-payments.db", "client")
        assert client["total"] == client["amount"] == delivered
        wait_until(lambda: rows(net.root / "proxy-payments.db", "proxy_in")[0]["seqno"] == client["seqno"], what="v")
        (proxy_in,) = rows(net.root / "proxy-payments.db", "proxy_in")
        # every voucher the client signed is in the proxy's database; nothing beyond what was delivered is billed
        assert proxy_in["amount"] == proxy_in["total"] == delivered
    finally:
        net.stop()


def test_an_answer_the_client_refuses_after_its_end_is_written_off_not_left_unpaid(
    chain: Chain, tmp_path: Path
) -> None:
    # The worker leaves out the sealed copy of its usage record: the proxy sees nothing wrong
    # and bills the answer; the client refuses it as truncated (502) and pays nothing. It says
    # so with a cancel after the end, and the proxy writes the answer off (against the stake):
    # else the answer would count as delivered and unpaid, and the next request be refused.
    net = Network(tmp_path / "net", workers=0, chain=chain)
    try:
        net.start_worker(1, fault="no_sealed_end")
        net.wait_workers(1)
        for _ in range(2):
            with pytest.raises(openai.APIStatusError) as caught:
                ask(net, "Hello", stream=False)
            assert caught.value.status_code == 502 and "truncated" in caught.value.message
        # billed twice, written off twice (the second cancel may still be on its way)
        wait_until(lambda: rows(net.root / "proxy-payments.db", "proxy_in")[0]["total"] == 0, what="the write-offs")
        (proxy_in,) = rows(net.root / "proxy-payments.db", "proxy_in")
        assert proxy_in["amount"] == 0
        assert net.nodes["proxy"].log.count("its client gave up before its end arrived") == 2
    finally:
        net.stop()


def assert_books_agree(net: Network) -> None:
    """Once the client's newest voucher is in the proxy's books, both books show one amount paid
    and billed."""
    (client,) = rows(net.root / "client-payments.db", "client")
    wait_until(lambda: rows(net.root / "proxy-payments.db", "proxy_in")[0]["seqno"] == client["seqno"], what="v")
    (proxy_in,) = rows(net.root / "proxy-payments.db", "proxy_in")
    assert proxy_in["amount"] == proxy_in["total"] == client["amount"] == client["total"]


def test_a_voucher_lost_in_flight_is_recovered_when_the_client_reattaches(chain: Chain, tmp_path: Path) -> None:
    # The double loses its first voucher on the way, as if the proxy had stopped before it came.
    net = Network(tmp_path / "net", workers=1, chain=chain, client_module="tests.integration.voucher_losing_client")
    try:
        ask(net, "Hello", stream=False)
        net.nodes["proxy"].stop()
        net.start_proxy()  # the client reattaches, naming its newest voucher
        net.wait_workers(1)
        wait_until(lambda: _served(net), what="the restarted proxy to serve")
        proxy = net.nodes["proxy"]
        assert proxy.alive() and "refusing to run" not in proxy.log
        assert "a voucher lost in flight covers" in proxy.log
        assert_books_agree(net)
    finally:
        net.stop()


def test_a_voucher_lost_in_flight_is_recovered_on_the_same_connection(chain: Chain, tmp_path: Path) -> None:
    # The next request is refused as not paid for (402); the client, as after any 402, names its
    # channel again on the same connection with its newest voucher, which covers the answer, and
    # the request goes through: the caller never sees the 402.
    net = Network(tmp_path / "net", workers=1, chain=chain, client_module="tests.integration.voucher_losing_client")
    try:
        ask(net, "Hello", stream=False)
        ask(net, "Hello", stream=False)
        assert "the voucher it names covers" in net.nodes["proxy"].log
        assert_books_agree(net)
    finally:
        net.stop()


@pytest.mark.parametrize("client_module", ["cocoon", "tests.integration.slow_reading_client"])
def test_no_request_is_cut_or_written_off_when_the_proxys_attestation_expires_for_the_client(
    chain: Chain, tmp_path: Path, client_module: str
) -> None:
    # The client trusts the proxy's evidence for 8 s here (3600 by default): its connection must
    # end then. 2 s before, the client dials a fresh connection, attaches its channel there,
    # sends new requests there, and closes the old one once the answers it carries have ended
    # and are paid for. Two callers keep requests in flight on the old one across each switch;
    # the slow-reading client takes each answer's end half a second after the proxy billed it,
    # so that its attach on the fresh connection comes while answers on the old one are billed
    # and not yet paid (the proxy must not write them off).
    policy = tmp_path / "client-policy.toml"
    policy.write_text('mode = "development"\ntees = ["sim"]\nmax_cache_seconds = 8\n'
                      '[proxy]\nimage_hashes = "*"\nmodel_hashes = "*"\n'
                      '[worker]\nimage_hashes = "*"\nmodel_hashes = "*"\n')  # fmt: skip
    net = Network(tmp_path / "net", workers=0, chain=chain, client={"policy": str(policy)}, client_module=client_module)
    try:
        net.start_worker(1, fault="slow:0.05")  # about half a second per answer below
        net.wait_workers(1)
        deadline = time.monotonic() + 20  # past two expiries

        def caller(n: int) -> int:
            # (at temperature 0: sampled, an answer's usage may claim a ninth token, which the
            # client refuses as more than max_tokens; an engine matter, not this one's)
            return stream_until(net.url, deadline, temperature=0)

        with ThreadPoolExecutor(2) as pool:
            answered = sum(pool.map(caller, range(2)))
        assert answered >= 16
        client = net.nodes["client"].log
        renewals = re.findall(r"renewed the connection to proxy \S+; the old one closes once its (\d+)", client)
        assert len(renewals) >= 2 and any(int(n) > 0 for n in renewals)  # requests in flight across a switch
        assert "lost proxy" not in client and "attestation expired" not in client

        paid = receipts(net)
        assert len(paid) == answered
        delivered = sum(r["cost_nanoton"] for r in paid)
        (mine,) = rows(net.root / "client-payments.db", "client")
        assert mine["total"] == mine["amount"] == delivered > 0 and mine["seqno"] == answered
        wait_until(lambda: rows(net.root / "proxy-payments.db", "proxy_in")[0]["amount"] == delivered, what="v")
        (proxy_in,) = rows(net.root / "proxy-payments.db", "proxy_in")
        # every answer billed was paid, on whichever connection it ended: nothing written off
        assert proxy_in["total"] == proxy_in["amount"] == delivered
        assert _written_off(net) == 0
        assert "refused its voucher" not in net.nodes["proxy"].log
    finally:
        net.stop()


def test_a_client_claiming_a_newer_voucher_it_cannot_show_does_not_stop_the_proxy(chain: Chain, tmp_path: Path) -> None:
    net = Network(tmp_path / "net", workers=1, chain=chain, client_module="tests.integration.rollback_claiming_client")
    try:
        ask(net, "Hello", stream=False)  # the claim is ignored at the first attach already
        # the answer's voucher was sent before the answer reached the caller, and is committed
        # soon after: a proxy stopped before would lose it (a client attaching again names its
        # newest voucher, and the proxy takes it then; this one names a claim instead)
        wait_until(lambda: _voucher_seqno(net) > 0, what="the proxy to commit the voucher")
        net.nodes["proxy"].stop()
        net.start_proxy()  # and at the reattach, to a channel with vouchers in the proxy's books
        net.wait_workers(1)
        wait_until(lambda: _served(net), what="the restarted proxy to serve")
        proxy = net.nodes["proxy"]
        assert proxy.alive() and "refusing to run" not in proxy.log
        assert proxy.log.count("ignored the newest voucher it names") >= 2  # the log spans both runs
        wait_until(lambda: _voucher_seqno(net) > 1, what="the proxy to commit the next voucher")
        assert _voucher_seqno(net) < 10**9
    finally:
        net.stop()


def test_a_proxy_database_restored_from_an_old_copy_is_refused(chain: Chain, tmp_path: Path) -> None:
    net = Network(tmp_path / "net", workers=1, chain=chain)
    db = net.root / "proxy-payments.db"
    try:
        ask(net, "Hello", stream=False)
        net.nodes["proxy"].stop()  # commits its state sequence number on chain as it stops
        old = tmp_path / "old-copy.db"
        shutil.copy(db, old)
        net.start_proxy()
        net.wait_workers(1)
        wait_until(lambda: _served(net), what="the restarted proxy to serve")
        ask(net, "Hello again", stream=True)
        net.nodes["proxy"].stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        shutil.copy(old, db)
        proxy = net.start_proxy()
        proxy.process.wait(timeout=60)
        assert proxy.process.returncode == 2
        assert "older than the chain" in proxy.log
    finally:
        net.stop()


def test_a_price_rise_is_billed_only_once_clients_can_have_seen_it(chain: Chain, tmp_path: Path) -> None:
    # The client reads the registry once a minute, the proxy every half second: for a while
    # after the rise, the client still prices answers at the old rate and pays no more.
    net = Network(tmp_path / "net", workers=1, chain=chain, client={"registry_poll": 60.0})
    dear = c.RootParams(**{**UP_PARAMS.__dict__, "price_per_token": 2 * PRICES.price_per_token})
    try:
        ask(net, "Hello", stream=False)
        change_registry(chain, net, lambda admin: admin.set_params(dear))
        net.nodes["proxy"].wait_for_log("is at version", timeout=10)
        ask(net, "Hello again", stream=False)
        ask(net, "And again", stream=False)  # refused (402) if the last answer was billed above its voucher
        paid = receipts(net)
        assert len(paid) == 3
        for r in paid:  # billed, and paid, at the old price
            assert r["cost_nanoton"] == at_list_price(r) > 0
        assert "the proxy billed" not in net.nodes["client"].log  # never more than the client's figure
    finally:
        net.stop()


def test_a_worker_the_registry_no_longer_allows_is_disconnected(chain: Chain, tmp_path: Path) -> None:
    from cocoon.attest.sim import SimMeasurements

    net = Network(tmp_path / "net", workers=2, chain=chain, worker={"reconnect_max": 1.0})

    def workers_listed() -> int:
        data = httpx.get(net.url + "/models", timeout=2).json()["data"]
        return sum(m["workers"] for m in data if m["id"] == MODEL)

    try:
        assert workers_listed() == 2
        change_registry(chain, net, lambda admin: admin.remove_image(c.ROLE_WORKER, SimMeasurements().image_hash))
        wait_until(lambda: workers_listed() == 0, timeout=5, what="the workers to be disconnected")
        assert "no longer allowed by the registry" in net.nodes["proxy"].log
        time.sleep(2.0)  # they redial, and are refused at the handshake now
        assert workers_listed() == 0
        assert "image_not_allowed" in net.nodes["proxy"].log
    finally:
        net.stop()


def test_removing_the_model_from_the_registry_disconnects_its_workers(chain: Chain, tmp_path: Path) -> None:
    from cocoon.attest.model_hash import model_hash
    from cocoon.engine.llama_cpp import embedded_model_path

    net = Network(tmp_path / "net", workers=1, chain=chain, worker={"reconnect_max": 1.0})
    removed = model_hash(embedded_model_path(), cache=net.root.parent / "model-hashes.json")
    try:
        change_registry(chain, net, lambda admin: admin.remove_model(removed))
        net.nodes["proxy"].wait_for_log("no longer allowed by the registry", timeout=5)
        assert "model_not_allowed" in net.nodes["proxy"].log or "is not allowed" in net.nodes["proxy"].log
        error = refused_any(net)
        assert error.status_code in (503, 404)
    finally:
        net.stop()


def refused_any(net: Network) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        ask(net, "Hello", stream=False)
    return caught.value


def test_the_client_finds_its_proxies_in_the_registry(chain: Chain, tmp_path: Path) -> None:
    net = Network(tmp_path / "net", workers=1, chain=chain, pin_proxy=False)  # no proxy in the client's config
    try:
        ask(net, "Hello", stream=False)
        assert f"connected to proxy 127.0.0.1:{net.proxy_port}" in net.nodes["client"].log
    finally:
        net.stop()
