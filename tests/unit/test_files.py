"""Files a user points Cocoon at are read bounded: too large is an error, not a whole read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cocoon.attest.policy import PolicyError, load_policy
from cocoon.files import FileTooLarge, read_bounded
from cocoon.keys import KeyFileError, load_identity


def test_a_file_up_to_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1024)
    assert read_bounded(path, 1024) == b"x" * 1024


def test_a_file_past_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 1025)
    with pytest.raises(FileTooLarge, match="larger than 1 KiB"):
        read_bounded(path, 1024)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_file_is_refused_after_the_limit() -> None:
    with pytest.raises(FileTooLarge):
        read_bounded(Path("/dev/zero"), 4096)


def test_a_key_file_that_is_far_too_large_is_not_a_key(tmp_path: Path) -> None:
    path = tmp_path / "worker.key"
    path.write_bytes(b"-" * (1024 * 1024))
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a key file"):
        load_identity(path)


def test_a_policy_file_that_is_far_too_large_or_not_text_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"#" * (2 * 1024 * 1024))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError):
        load_policy(path)
