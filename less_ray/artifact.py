"""Content-keyed artifacts: the hashes that name a file's bytes, and `claim`, which makes a folder hold
only what one set of inputs produced (the one rule every stage that reuses outputs follows)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from . import storage

log = logging.getLogger("less_ray")


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


def key_digest(key: dict[str, Any]) -> str:
    """sha256 of a key's canonical JSON: a folder name for the outputs of those inputs."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _short(v: Any) -> str:
    return f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else str(v)


def key_changes(before: dict[str, Any] | None, key: dict[str, Any]) -> str:
    """What differs between two keys, for a log line or an error ("seed 0 -> 1, ...")."""
    if before is None:
        return "its outputs record no inputs"
    return ", ".join(f"{k} {_short(before.get(k))} -> {_short(key.get(k))}"
                     for k in sorted(set(before) | set(key)) if before.get(k) != key.get(k))


def claim(folder, key: dict[str, Any], key_file: str, wipe: Sequence[str] | None = None, stage: str = "",
          keep: Callable[[dict[str, Any] | None], bool] | None = None) -> bool:
    """Make `folder` hold only outputs computed from `key` (recorded in `folder/key_file`): if it
    holds outputs of other inputs (another checkpoint, seed, data file, encoder, ... or outputs that
    predate the key), remove them, the manifest first, so a killed rerun can never pass old outputs
    off as new. `wipe`: the entries to remove (default: every entry but the key file); `keep(before)`
    may accept a different recorded key (or raise). Returns whether anything was removed."""
    folder = storage.location(folder)
    path = folder / key_file
    before = json.loads(path.read_text()) if path.exists() else None
    if before == key:
        return False
    removed = False
    if not (keep and keep(before)) and folder.exists():
        names = [p.name for p in folder.iterdir() if p.name != key_file] if wipe is None else list(wipe)
        present = [n for n in names if (folder / n).exists()]
        if present:
            log.warning("%s: %s was made from other inputs (%s): recomputing it", stage or "outputs", folder,
                        key_changes(before, key))
            for name in sorted(present, key=lambda n: n != "manifest.json"):  # the manifest goes first
                target = folder / name
                if target.is_dir():
                    storage.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
            removed = True
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(path, json.dumps(key, indent=1, sort_keys=True))
    return removed
