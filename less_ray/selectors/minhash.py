"""`less-ray dedup`: near-duplicate filtering of a pool with MinHash LSH (datasketch), before any selector.

The MinHash itself (text, word n-gram shingles, signatures, the keep-first index) is
`selection.minhash`'s, shared with the report. Signatures (`num_perm` values, seeded, word
`ngram`-grams, default 5) are computed here on a Ray Data actor pool over the sharded pool's
shards; the driver then walks the pool in order through one `NearDuplicateIndex` (`threshold`,
`recall_weight`): the first occurrence is kept, the result depends on pool order and seed only,
and a dropped record always names a kept one.

Outputs: `out` (the filtered pool, JSONL or Parquet by extension, records unchanged and in order),
`<out>.duplicates.jsonl` (every dropped id with the kept id it duplicates and the estimated
Jaccard), `<out>.dedup.json` (counts) and `<out>.dedup.config.yaml`. Memory on the driver: the
kept records' signatures (4·num_perm bytes each), their ids and the LSH band tables — linear in
the kept pool, not in its text.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import save_config, path_field
from ..ray_runtime import RayStage
from ..selection.minhash import NearDuplicateIndex, conversation_text, signatures
from .base import ShardActor, map_shards, shard_records

log = logging.getLogger("less_ray")


@dataclass
class DedupConfig(RayStage):
    pool: str = path_field("in", "")  # records (schema JSONL/Parquet)
    out: str = path_field("out", "")  # the filtered pool (.jsonl or .parquet)
    threshold: float = 0.8  # estimated Jaccard of shingle sets at or above which a record is a duplicate
    ngram: int = 5  # words per shingle
    num_perm: int = 128
    seed: int = 1  # MinHash permutation seed
    recall_weight: float = 0.95  # LSH band/row choice: weight of missed pairs vs false candidates
    work_dir: str | None = None  # sharded pool + signatures; default <out>.dedup_work
    shard_rows: int = 4096


class SignatureActor(ShardActor):
    def __init__(self, sharded: str, sig_dir: str, ngram: int, num_perm: int, seed: int):
        super().__init__(sharded)
        self.sig_dir, self.ngram, self.num_perm, self.seed = Path(sig_dir), ngram, num_perm, seed

    def process(self, shard: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sig = signatures([conversation_text(r["messages"]) for r in rows], self.ngram, self.num_perm, self.seed)
        tmp = self.sig_dir / f".tmp-{shard:05d}.npy"
        with open(tmp, "wb") as fh:
            np.save(fh, sig)
        tmp.rename(self.sig_dir / f"{shard:05d}.npy")
        return {"shard": shard, "rows": len(rows)}


def run_dedup(cfg: DedupConfig) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from ..data.io import iter_records, write_records
    if not cfg.pool or not cfg.out:
        raise ValueError("dedup: 'pool' and 'out' are required")
    if cfg.ngram < 1 or cfg.num_perm < 2:
        raise ValueError(f"dedup: ngram must be >= 1 and num_perm >= 2 (got {cfg.ngram}, {cfg.num_perm})")
    t0 = time.time()
    out = Path(cfg.out)
    work = Path(cfg.work_dir or f"{out}.dedup_work").resolve()
    sharded, n_rows, n_shards, digest = shard_records(cfg.pool, work, cfg.shard_rows)
    sig_dir = work / f"sig_n{cfg.ngram}_p{cfg.num_perm}_s{cfg.seed}"
    sig_dir.mkdir(parents=True, exist_ok=True)
    key = {"pool_sha256": digest, "shard_rows": cfg.shard_rows}
    key_file = sig_dir / "key.json"
    if not key_file.exists() or json.loads(key_file.read_text()) != key:
        for f in sig_dir.glob("*.npy"):  # signatures of another pool file or shard layout
            f.unlink()
    key_file.write_text(json.dumps(key))
    todo = [s for s in range(n_shards) if not (sig_dir / f"{s:05d}.npy").exists()]
    log.info("dedup: %d records in %d shards, %d to sign", n_rows, n_shards, len(todo))
    map_shards(cfg, SignatureActor, {"sharded": str(sharded), "sig_dir": str(sig_dir), "ngram": cfg.ngram,
                                     "num_perm": cfg.num_perm, "seed": cfg.seed}, todo)
    t_sign = time.time() - t0

    index = NearDuplicateIndex(cfg.threshold, cfg.num_perm, cfg.seed, cfg.recall_weight)
    keep = np.zeros(n_rows, dtype=bool)
    dup_path = Path(f"{out}.duplicates.jsonl")
    dup_path.parent.mkdir(parents=True, exist_ok=True)
    input_file = pq.ParquetFile(sharded)
    n_dup, row = 0, 0
    with open(dup_path.with_name(dup_path.name + ".tmp"), "w", encoding="utf-8") as fh:
        for s in range(n_shards):
            t = input_file.read_row_group(s, columns=["id", "source"])
            ids, sources = t.column("id").to_pylist(), t.column("source").to_pylist()
            sig = np.load(sig_dir / f"{s:05d}.npy")
            if len(sig) != len(ids):
                raise RuntimeError(f"dedup: {sig_dir}/{s:05d}.npy has {len(sig)} rows, shard {s} has {len(ids)}")
            for rid, src, h in zip(ids, sources, sig):
                hit = index.add(rid, h)
                if hit is None:
                    keep[row] = True
                else:
                    fh.write(json.dumps({"id": rid, "source": src, "duplicate_of": hit[0],
                                         "jaccard": round(hit[1], 4)}, ensure_ascii=False) + "\n")
                    n_dup += 1
                row += 1
    dup_path.with_name(dup_path.name + ".tmp").replace(dup_path)
    t_index = time.time() - t0 - t_sign
    flags = iter(keep)
    n_kept = write_records((r for r in iter_records(cfg.pool) if next(flags)), out)
    if n_kept + n_dup != n_rows:
        raise RuntimeError(f"dedup: {n_kept} kept + {n_dup} duplicates != {n_rows} records")
    summary = {"pool": cfg.pool, "pool_sha256": digest, "records": n_rows, "kept": n_kept, "duplicates": n_dup,
               "out": str(out), "duplicates_file": str(dup_path),
               "seconds": {"signatures": round(t_sign, 2), "index": round(t_index, 2),
                           "total": round(time.time() - t0, 2)}}
    Path(f"{out}.dedup.json").write_text(json.dumps(summary, indent=2))
    save_config(cfg, f"{out}.dedup.config.yaml")
    log.info("dedup: %d records -> %d kept, %d near-duplicates dropped (%.1fs)", n_rows, n_kept, n_dup,
             time.time() - t0)
    return summary
