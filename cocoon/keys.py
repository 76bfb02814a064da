"""Ed25519 node identity keys: created once, stored as PEM with mode 0600."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cocoon.files import FileTooLarge, read_bounded

MAX_KEY_FILE = 64 * 1024  # a PEM key is a few hundred bytes


class KeyFileError(Exception):
    pass


def load_or_create_identity(path: Path) -> Ed25519PrivateKey:
    """Load the key at ``path``, creating it (mode 0600, parents 0700) if missing."""
    if path.exists():
        return load_identity(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    create_private_file(path, pem)
    return key


def create_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` (mode 0600) holding ``data``, whole or not at all: a write cut short (a
    full disk, a crash) must not leave a truncated key that every later start refuses. Written to
    a temporary file beside it and synced, then linked into place, which fails if ``path`` has
    appeared meanwhile (as ``O_EXCL`` would)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def load_identity(path: Path) -> Ed25519PrivateKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise KeyFileError(f"{path} is readable by others (mode {mode:o}); run chmod 600 on it")
    try:
        key = serialization.load_pem_private_key(read_bounded(path, MAX_KEY_FILE), password=None)
    except FileTooLarge as exc:
        raise KeyFileError(f"{exc}: not a key file") from exc
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} does not hold an Ed25519 key")
    return key


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(text: str) -> bytes:
    """A public key as written in config: 64 hex digits."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise ValueError(f"public key {text!r} is not 64 hex digits")
    return bytes.fromhex(text.strip())
