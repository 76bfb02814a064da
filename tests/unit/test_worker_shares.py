"""A worker serving several proxies offers each the capacity that the others leave it."""

from __future__ import annotations

from cocoon.worker.service import shares


def test_each_proxy_is_offered_what_the_others_leave() -> None:
    assert shares(4, {}, [1, 2]) == {1: 4, 2: 4}
    assert shares(4, {1: 3}, [1, 2]) == {1: 4, 2: 1}  # its own requests still count as its share
    assert shares(4, {1: 3, 2: 1}, [1, 2]) == {1: 3, 2: 1}
    assert shares(4, {1: 5}, [1, 2]) == {1: 4, 2: 0}  # never below none
    assert shares(4, {3: 2}, [1, 2]) == {1: 2, 2: 2}  # a connection gone or closing still holds its requests
