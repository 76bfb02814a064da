"""Model identity: SHA-256 of the weights file, or of a sorted manifest for a directory.

Hashing gigabytes takes a while, so the result is cached next to the node's state, keyed by
path, size and modification time of every file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stamp(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def model_hash(path: Path, cache: Path | None = None) -> bytes:
    """SHA-256 of ``path``; for a directory, of the manifest ``"<hex>  <relative path>\\n"``
    lines of its files in sorted order (the ``sha256sum`` format)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    key = hashlib.sha256(json.dumps([_stamp(p) for p in files]).encode()).hexdigest()
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except ValueError:
            known = {}
        if isinstance(known, dict) and isinstance(known.get(key), str):
            return bytes.fromhex(known[key])
    else:
        known = {}
    if path.is_dir():
        manifest = "".join(f"{_file_hash(p)}  {p.relative_to(path).as_posix()}\n" for p in files)
        result = hashlib.sha256(manifest.encode()).digest()
    else:
        result = bytes.fromhex(_file_hash(path))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: result.hex()}))
    return result
