"""Node identity keys on disk, and public keys as written in config."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cocoon.keys import KeyFileError, load_identity, load_or_create_identity, parse_public_key, public_bytes


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_key(path: Path, pem: bytes, mode: int = 0o600) -> None:
    path.write_bytes(pem)
    path.chmod(mode)


def test_creates_key_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "state" / "node.key"
    key = load_or_create_identity(path)
    assert isinstance(key, Ed25519PrivateKey)
    assert path.is_file()
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_key_whose_write_fails_leaves_no_file_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a truncated key would make every later start fail with "not an unencrypted PEM"
    import os

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    path = tmp_path / "node.key"
    with pytest.raises(OSError, match="No space"):
        load_or_create_identity(path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert isinstance(load_or_create_identity(path), Ed25519PrivateKey)
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"] and mode_of(path) == 0o600


def test_a_key_file_that_appeared_meanwhile_is_not_overwritten(tmp_path: Path) -> None:
    from cocoon.keys import create_private_file

    path = tmp_path / "node.key"
    path.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        create_private_file(path, b"ours")
    assert path.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["node.key"]


def test_reloads_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    first = load_or_create_identity(path)
    content = path.read_bytes()
    second = load_or_create_identity(path)
    assert public_bytes(second) == public_bytes(first)
    assert path.read_bytes() == content  # not rewritten
    assert public_bytes(load_identity(path)) == public_bytes(first)


def test_two_paths_give_two_keys(tmp_path: Path) -> None:
    a = load_or_create_identity(tmp_path / "a.key")
    b = load_or_create_identity(tmp_path / "b.key")
    assert public_bytes(a) != public_bytes(b)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_a_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    load_or_create_identity(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_identity(path)


def test_owner_only_read_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = load_or_create_identity(path)
    path.chmod(0o400)
    assert public_bytes(load_identity(path)) == public_bytes(key)


def test_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    write_key(path, b"this is not a key\n")
    with pytest.raises(KeyFileError, match="PEM"):
        load_or_create_identity(path)


def test_refuses_a_key_of_another_kind(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_key(path, pem)
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_identity(path)


def test_refuses_an_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    write_key(path, pem)
    with pytest.raises(KeyFileError):
        load_identity(path)


def test_public_bytes_of_private_and_public_key_agree() -> None:
    key = Ed25519PrivateKey.generate()
    raw = public_bytes(key)
    assert len(raw) == 32
    assert public_bytes(key.public_key()) == raw


def test_parse_public_key_accepts_64_hex_digits() -> None:
    key = Ed25519PrivateKey.generate()
    text = public_bytes(key).hex()
    assert parse_public_key(text) == public_bytes(key)
    assert parse_public_key(text.upper()) == public_bytes(key)
    assert parse_public_key(f"  {text}\n") == public_bytes(key)


@pytest.mark.parametrize(
    "text",
    ["", "00" * 31, "00" * 33, "0" * 63, "zz" * 32, "0x" + "00" * 31, "g" + "0" * 63],
)
def test_parse_public_key_rejects_others(text: str) -> None:
    with pytest.raises(ValueError, match="public key"):
        parse_public_key(text)
