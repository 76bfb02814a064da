"""`cocoon up` stops once: the first SIGINT or SIGTERM begins the shutdown, later ones wait."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cocoon.up import _Stop, stop_on_signals


def wait_for_the_handler() -> None:
    time.sleep(0.5)  # a Python signal handler runs between bytecodes of the main thread


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_the_shutdown_does_not_cut_it(sig: signal.Signals) -> None:
    previous = stop_on_signals()
    stopped = False
    try:
        try:
            os.kill(os.getpid(), sig)
            wait_for_the_handler()
        except _Stop:
            stopped = True
            os.kill(os.getpid(), sig)  # Ctrl-C again while `up` prints "stopping…"
            os.kill(os.getpid(), signal.SIGINT if sig == signal.SIGTERM else signal.SIGTERM)
            wait_for_the_handler()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert stopped
    assert signal.getsignal(signal.SIGINT) is previous[signal.SIGINT]
