"""Reading the files a user points a node or a command at, bounded: a path to /dev/zero, or to a
log where a key was meant, must be an error, not a read of everything it holds."""

from __future__ import annotations

from pathlib import Path


class FileTooLarge(OSError):
    pass


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``; ``FileTooLarge`` (an ``OSError``) when it holds more than ``limit``."""
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{path} is larger than {limit // 1024} KiB")
    return data
