"""Which stores may be combined: refuse any mismatch, naming it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..store import StoreManifest, StoreMismatch, read_manifest


@dataclass
class CheckpointStores:
    """One checkpoint: its pool store and, per task, its target store."""
    checkpoint_hash: str
    pool: str
    targets: dict[str, str]
    avg_lr: float | None


def _admit(path: str, m: StoreManifest, kind: str, role: str, first: StoreManifest, first_path: str,
           seen: dict[str, str]) -> None:
    """One more store of `role` (kind `kind`) beside `first`; `seen`: checkpoint hash -> store of this role."""
    if m.kind != kind:
        raise StoreMismatch(f"{path}: {role} has kind {m.kind!r}; LESS uses {kind} features there")
    first.compatible(m, first_path, path)
    if m.checkpoint_hash in seen:
        raise StoreMismatch(f"{path} and {seen[m.checkpoint_hash]} ({role}) come from the same checkpoint")
    seen[m.checkpoint_hash] = path


def match_stores(pool_stores: list[str], task_stores: dict[str, list[str]]) -> list[CheckpointStores]:
    """Pair each pool store (one per checkpoint, kind adam) with each task's target store of the
    same checkpoint (kind sgd, matched by checkpoint content hash). Everything must agree on
    base model, projection and normalisation; the pool stores must share one layout of ids."""
    if not pool_stores:
        raise StoreMismatch("no pool stores given")
    pools = {p: read_manifest(p) for p in pool_stores}
    first_path, first = next(iter(pools.items()))
    seen_ckpt: dict[str, str] = {}
    for path, m in pools.items():
        _admit(path, m, "adam", "pool store", first, first_path, seen_ckpt)
        if m.count == 0:
            raise StoreMismatch(f"{path}: the pool store holds no examples ({_skipped(m)}): nothing to score")
        sa, sb = first.input.get("sha256"), m.input.get("sha256")
        if sa and sb and sa != sb:
            raise StoreMismatch(f"{path} was extracted from another input than {first_path} "
                                f"({m.input.get('path')} sha256 {sb[:12]}... vs {first.input.get('path')} {sa[:12]}...): "
                                "extract every checkpoint from the same pool file")
        layout = [(s["rows"]) for s in m.shards]
        if layout != [s["rows"] for s in first.shards] or m.count != first.count:
            raise StoreMismatch(f"{path} has a different shard layout from {first_path} "
                                f"({m.count} rows in {len(m.shards)} shards vs {first.count} in {len(first.shards)}): "
                                "extract every checkpoint from the same pool file with the same shard size")
    out = [CheckpointStores(m.checkpoint_hash, p, {}, m.avg_lr) for p, m in pools.items()]
    for task, paths in task_stores.items():
        by_ckpt: dict[str, str] = {}
        for path in paths:
            m = read_manifest(path)
            _admit(path, m, "sgd", f"target store of {task}", first, first_path, by_ckpt)
            if m.count == 0:
                raise StoreMismatch(f"task {task}: target store {path} holds no examples ({_skipped(m)}): "
                                    "nothing to score against")
        for ck in out:
            if ck.checkpoint_hash not in by_ckpt:
                raise StoreMismatch(f"task {task}: no target store for the checkpoint of pool store {ck.pool} "
                                    f"({pools[ck.pool].checkpoint})")
            ck.targets[task] = by_ckpt.pop(ck.checkpoint_hash)
        if by_ckpt:
            raise StoreMismatch(f"task {task}: target store(s) {sorted(by_ckpt.values())} match no pool store's checkpoint")
    return out


def _skipped(m: StoreManifest) -> str:
    n = (m.skipped or {}).get("count") or 0
    f = (m.skipped or {}).get("file")
    return f"all {n} skipped by extract, reasons in its {f}" if n else "its input held none"


def shard_entries(store: str) -> list[dict]:
    """The manifest's shard entries (file confined to the store, rows, sha256)."""
    return read_manifest(store).shards


def shard_files(store: str) -> list[Path]:
    from ..store import shard_path
    return [shard_path(store, e) for e in read_manifest(store).shards]
