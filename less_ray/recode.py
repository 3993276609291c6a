"""`less-ray recode`: a finished datastore's features rewritten in another stored dtype.

A 1M-candidate float16 store at d=8192 is 16 GB per checkpoint; int8 halves it, 1-bit signs cut it
16x (core/quantize.py; what each costs in selection: docs/results.md). Recoding reads each shard
(its sha256 checked), decodes the features to float32, codes them in the new dtype and writes the
shard with every other column unchanged, so recoding a float32 store gives byte for byte the
shards extract would have written with that dtype. The manifest is the source's, with the new
dtype and shards, and `extra.recoded_from` naming the source store and its manifest checksum.

The output folder is keyed by that source checksum and dtype (a rerun skips finished shards; a
folder made from another source is cleared first), and is held by the one-writer lock.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from . import storage
from .artifact import claim
from .config import path_field, save_config
from .core.quantize import check_dtype
from .run_lock import locked
from .store import (SHARD_KEY, feature_rows, features_table, local_shard, manifest_digest, read_manifest, read_shard,
                    verified_shard, verify_shard_checksum, write_manifest, write_shard)

log = logging.getLogger("less_ray")


@dataclass
class RecodeConfig:
    store: str = path_field("in", "")  # a finished datastore (one dim<d> folder, local or a URI)
    out: str = path_field("out", "")  # the recoded store
    dtype: str = "int8"  # float16 | float32 | int8 | int4 | sign


@locked("recode")
def run_recode(cfg: RecodeConfig):
    check_dtype(cfg.dtype, "recode: dtype")
    if not cfg.store or not cfg.out:
        raise ValueError("recode: store and out are required")
    src = read_manifest(cfg.store)  # (its checksum and shard paths checked)
    if src.dtype == cfg.dtype:
        raise ValueError(f"recode: {cfg.store} is {cfg.dtype} already")
    out = storage.location(cfg.out)
    # the checksum read_manifest verified: the digest of the manifest it returned
    source = {"store": str(cfg.store), "manifest_sha256": manifest_digest(dataclasses.asdict(src)), "dtype": src.dtype}
    claim(out, {"recoded_from": source, "dtype": cfg.dtype}, SHARD_KEY, stage="recode")
    entries = []
    for entry in src.shards:
        done = verified_shard(out, entry["index"])
        if done is None:
            done = write_shard(out, entry["index"], _recoded(cfg.store, entry, src, cfg.dtype))
        entries.append(done)
    src_root = storage.location(cfg.store)
    if (src.skipped or {}).get("file"):
        storage.write_atomic(out / src.skipped["file"], (src_root / src.skipped["file"]).read_text())
    man = dataclasses.replace(src, dtype=cfg.dtype, shards=entries, extra={**src.extra, "recoded_from": source})
    write_manifest(out, man)
    save_config(cfg, out / "recode.config.yaml")
    log.info("recode: %s (%s) -> %s (%s), %d rows in %d shards", cfg.store, src.dtype, cfg.out, cfg.dtype,
             src.count, len(entries))
    return out


def _recoded(store, entry, man, dtype: str):
    """The source shard's table with its features decoded and coded in `dtype`."""
    import numpy as np
    with local_shard(store, entry) as (path, local):
        verify_shard_checksum(store, entry, local)
        table = read_shard(local)
        feats = [feature_rows(b, man.dtype, man.projection.dim, path).widen() for b in table.to_batches()]
    feats = np.concatenate(feats) if feats else np.zeros((0, man.projection.dim), np.float32)
    col = lambda name: table.column(name).to_pylist()  # noqa: E731
    with_task = "task" in table.schema.names
    return features_table(col("id"), col("source"), feats, np.asarray(col("norm"), np.float32),
                          np.asarray(col("n_tokens"), np.int32), np.asarray(col("loss"), np.float32), dtype,
                          tasks=col("task") if with_task else None, subtasks=col("subtask") if with_task else None)
