"""Child processes that do not outlive their parent."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
