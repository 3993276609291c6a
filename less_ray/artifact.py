"""Content-keyed artifacts: the hashes that name a file's bytes, and `claim`, which makes a folder hold
only what one set of inputs produced (the one rule every stage that reuses outputs follows)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from . import storage


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with storage.location(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_files(paths: list[str | Path]) -> str:
    """One content hash over several files (name and bytes), order-independent of the list."""
    h = hashlib.sha256()
    for p in sorted((storage.location(x) for x in paths), key=str):
        h.update(p.name.encode() + b"\0" + sha256_file(p).encode())
    return h.hexdigest()
