"""A worker serving several proxies offers each the capacity that the others leave it."""

from __future__ import annotations

from cocoon.worker.service import shares


def test_each_proxy_is_told_it_has_no_room_once_the_worker_is_full() -> None:
    assert shares(4, {}, [1, 2]) == {1: 4, 2: 4}
    assert shares(4, {1: 3}, [1, 2]) == {1: 4, 2: 4}  # room left: nothing to tell (no message)
    assert shares(4, {1: 3, 2: 1}, [1, 2]) == {1: 3, 2: 1}  # full: each keeps what it has, no more
    assert shares(4, {1: 4}, [1, 2]) == {1: 4, 2: 0}
    assert shares(4, {3: 4}, [1, 2]) == {1: 0, 2: 0}  # a connection gone or closing still holds its requests


def test_only_proxies_that_know_the_capacity_message_are_sent_it() -> None:
    """An older proxy refuses a message type it does not know (a protocol error closes the
    connection): the worker tells its share only to proxies of a version that knows it."""
    from cocoon.channel.connect import SOFTWARE, software_version
    from cocoon.worker.service import CAPACITY_SINCE

    assert (software_version(SOFTWARE) or ()) >= CAPACITY_SINCE  # this build's proxies are told
    assert (software_version("cocoon-py/0.1.0") or ()) < CAPACITY_SINCE
    assert software_version("cocoon-py/0.10.2") == (0, 10, 2)
    for other in ("", "cocoon/1.0.0", "cocoon-py/1.0", "cocoon-py/1.0.0-rc1", "cocoon-py/١.0.0"):
        assert software_version(other) is None


def test_a_client_ranks_a_worker_with_no_room_for_its_proxy_as_full() -> None:
    from cocoon.client.service import _in_use
    from cocoon.protocol.messages import WorkerOffer

    def offer(capacity: int, inflight: int) -> WorkerOffer:
        return WorkerOffer(worker_id=b"w" * 32, evidence=b"", capacity=capacity, inflight=inflight, price_milli=1000)

    assert _in_use(offer(4, 2)) == 0.5
    assert _in_use(offer(0, 0)) >= 1.0 > _in_use(offer(4, 3))  # not idle: it takes nothing from us now
