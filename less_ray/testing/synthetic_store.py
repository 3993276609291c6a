"""Synthetic gradient datastores: pool (adam) and target (sgd) stores for given features."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..storage import location
from ..store import Projection, StoreManifest, features_table, library_versions, write_manifest, write_shard


def write_store(path: str | Path, ids: list[str], features: np.ndarray, *, kind: str, checkpoint: str,
                sources: list[str] | None = None, subtasks: list[str | None] | None = None, task: str | None = None,
                shard_rows: int = 1000, dtype: str = "float32", model: str = "tiny", seed: int = 0,
                proj_type: str = "rademacher", normalized: bool = True, avg_lr: float | None = None,
                input_path: str | None = None) -> Path:
    path = location(path)
    n, dim = features.shape
    sources = sources or ["synthetic"] * n
    entries = []
    for i, lo in enumerate(range(0, n, shard_rows)):
        hi = min(n, lo + shard_rows)
        kw = {}
        if subtasks is not None:
            kw = {"tasks": [task] * (hi - lo), "subtasks": list(subtasks[lo:hi])}
        table = features_table(ids[lo:hi], sources[lo:hi], features[lo:hi], np.ones(hi - lo),
                               np.ones(hi - lo), np.zeros(hi - lo), dtype, **kw)
        entries.append(write_shard(path, i, table))
    write_manifest(path, StoreManifest(
        kind=kind, checkpoint=checkpoint, checkpoint_hash=f"hash-{checkpoint}", model=model,
        projection=Projection(proj_type, seed, dim), normalized=normalized, dtype=dtype, count=n,
        shards=entries, avg_lr=avg_lr, input={"path": input_path} if input_path else {},
        versions=library_versions()))
    return path
