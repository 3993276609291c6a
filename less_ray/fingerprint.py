"""What a stage's inputs are, by content: the pipeline reuses an artifact only when its config
and these fingerprints equal what would run now.

A file is its bytes' sha256; a datastore its manifest (which lists every shard's sha256); a
LoRA checkpoint and a model folder their content hashes (`identity`); any other folder the
names, sizes and modification times of its files. Paths never enter a fingerprint: a warmup
rerun that rewrites `epoch_1/` in place changes the fingerprint of every stage that reads it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .config import path_fields

_FILE_CACHE: dict[tuple, str] = {}
LOCK_PREFIX = ".less_ray.lock"  # run_lock's files (LOCK_FILE, HOLDER_FILE): touched by every writer, not content


def file_sha256(path: Path) -> str:
    """A file's sha256, cached per process by (path, size, mtime, inode): a pool read by several
    stages of one run is hashed once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _FILE_CACHE:
        from .artifact import sha256_file
        _FILE_CACHE[key] = sha256_file(path)
    return _FILE_CACHE[key]


def content_fingerprint(path: str | Path) -> str:
    from .identity import checkpoint_content_hash, model_content_hash
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        return "missing"
    if (p / "score_summary.json").exists():  # a score folder: what its score run wrote last
        return "scores:" + file_sha256(p / "score_summary.json")
    if (p / "manifest.json").exists():
        return "store:" + file_sha256(p / "manifest.json")
    if (p / "adapter_config.json").exists():
        return "checkpoint:" + checkpoint_content_hash(p)
    if (p / "config.json").exists():
        return "model:" + (model_content_hash(p) or "none")
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(LOCK_PREFIX)):
        st = f.stat()
        h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "folder:" + h.hexdigest()


def input_fingerprints(cfg: Any) -> dict[str, str]:
    """Key path -> content fingerprint of every input (and model) path of a stage config."""
    out = {}
    for key, kind, value in path_fields(cfg):
        if kind == "out" or not value:
            continue
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else [(None, value)]
        for sub, v in items:
            if isinstance(v, str) and "://" not in v:
                out[key if sub is None else f"{key}.{sub}"] = content_fingerprint(v)
    return out
