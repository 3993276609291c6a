"""`less-ray score`: LESS influence of every pool example on every target task, on Ray Data.

Ray Data runs one `ShardScorer` actor pool over the pool's shard indices. An actor reads shard i
of every checkpoint's pool store in lockstep (the stores share one id layout; each shard's ids
are checked equal, so this is a merge join on id), multiplies each block by the small
per-checkpoint [ΣS, d] matrix of weighted subtask-mean target features (core.influence), and
writes the shard's scores and id hashes. Feature memory per actor is bounded by `block_rows`;
ids and scores by the shard. The work is IO/decode bound (ΣS is a few dozen columns), so
features are copied straight from Parquet pages (store_raw) and widened to float32 in
cache-sized chunks. The driver then checks id uniqueness from the hashes, and only then streams
the parts into one `scores.parquet` per task.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import save_config
from ..core.influence import TaskQuery, normalize_weights, reduce_max, stack_queries
from ..ray_runtime import RayStage
from ..store import read_manifest, read_store
from ..store_raw import FeaturePages
from .stores import CheckpointStores, StoreMismatch, match_stores, shard_files

log = logging.getLogger("less_ray")


@dataclass
class TaskSpec:
    name: str
    target_stores: list[str]  # sgd stores of this task's targets, one per checkpoint (any order)


@dataclass
class ScoreConfig(RayStage):
    pool_stores: list[str] = field(default_factory=list)  # adam stores of the pool, one per checkpoint
    tasks: list[TaskSpec] = field(default_factory=list)
    out: str = ""
    weights: list[float] | None = None  # per pool store; default: the checkpoints' avg_lr; normalised to sum 1
    block_rows: int = 65536


def _id_hash(ids) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


def check_unique_ids(parts: Path, n_shards: int, pool_store: str) -> int:
    """Refuse a pool that holds an id twice. The actors hash each shard's ids (8 bytes per row,
    column `id_hash` of its part) while scoring, so this costs no extra pass over the store;
    the ids are named from the parts only on failure."""
    import pyarrow.parquet as pq
    files = [parts / f"{i:05d}.parquet" for i in range(n_shards)]
    h = np.concatenate([pq.read_table(f, columns=["id_hash"]).column(0).to_numpy() for f in files]
                       or [np.empty(0, np.uint64)])
    s = np.sort(h)
    dup = set(s[1:][s[1:] == s[:-1]].tolist())
    if dup:
        names = set()
        for f in files:
            t = pq.read_table(f, columns=["id", "id_hash"])
            names |= {i for i, x in zip(t.column(0).to_pylist(), t.column(1).to_pylist()) if x in dup}
        raise StoreMismatch(f"{pool_store}: id(s) stored more than once: {sorted(names)[:10]}")
    return len(h)


class ShardScorer:
    """Ray Data actor: scores whole shards (one batch row = one shard index)."""

    def __init__(self, pool_stores: list[str], matrices: list[np.ndarray], tasks: list[tuple[str, slice]],
                 parts_dir: str, block_rows: int, use_gpu: bool = False, threads: int = 1):
        import torch
        torch.set_num_threads(max(1, threads))
        self.files = [shard_files(s) for s in pool_stores]
        self.pool_stores = pool_stores
        self.tasks = tasks
        self.parts = Path(parts_dir)
        self.block_rows = block_rows
        self.device = torch.device("cuda" if use_gpu else "cpu")
        # zero rows up to a multiple of 8 columns: the matmul kernels run ~25% faster at 32 than 27
        pad = -len(matrices[0]) % 8
        self.matrices = [torch.tensor(np.pad(m, ((0, pad), (0, 0))), dtype=torch.float32, device=self.device)
                         for m in matrices]

    def _accumulate(self, out, features: np.ndarray, c: int) -> None:
        """out += features @ M_cᵀ. Float16 rows are widened to float32 a few hundred at a time,
        so the converted copy stays in cache instead of a second [rows, d] array in memory."""
        import torch
        x = torch.from_numpy(features if features.flags.writeable else features.copy())
        m_t = self.matrices[c].T
        if self.device.type != "cpu":
            out += (x.to(self.device).float() @ m_t).cpu()
            return
        for lo in range(0, len(x), _WIDEN_ROWS):
            out[lo:lo + _WIDEN_ROWS].addmm_(x[lo:lo + _WIDEN_ROWS].float(), m_t)

    def _feature_blocks(self, c: int, shard: int):
        """[block_rows, d] feature blocks of one store's shard: raw pages when the shard was written
        PLAIN and uncompressed (as `write_shard` does), else pyarrow's decoder."""
        import pyarrow.parquet as pq
        path = self.files[c][shard]
        raw = FeaturePages.open(path)
        if raw is not None:
            return raw.blocks(self.block_rows)
        batches = pq.ParquetFile(path).iter_batches(batch_size=self.block_rows, columns=["features"])
        return (_features(t) for t in _windows(batches, self.block_rows))

    def score_shard(self, shard: int) -> dict[str, Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import torch
        head = pq.read_table(self.files[0][shard], columns=["id", "source"])
        ids = head.column("id").combine_chunks()
        for c in range(1, len(self.files)):  # the stores share one id layout: a merge join on id
            if not pq.read_table(self.files[c][shard], columns=["id"]).column(0).combine_chunks().equals(ids):
                raise StoreMismatch(f"shard {shard}: ids of {self.pool_stores[c]} differ from "
                                    f"{self.pool_stores[0]}: stores are not aligned")
        n = len(ids)
        total = torch.zeros((n, self.matrices[0].shape[0]), dtype=torch.float32)
        row = 0
        readers = [self._feature_blocks(c, shard) for c in range(len(self.files))]
        for blocks in zip(*readers, strict=True):
            rows = len(blocks[0])
            if any(len(b) != rows for b in blocks) or row + rows > n:
                raise StoreMismatch(f"shard {shard}: feature rows of the pool stores do not line up with their ids")
            for c, b in enumerate(blocks):
                self._accumulate(total[row:row + rows], b, c)
            row += rows
        if row != n:
            raise StoreMismatch(f"shard {shard}: {row} feature rows for {n} ids")
        total = total.numpy()
        cols = {"id": ids, "source": head.column("source").combine_chunks(), "id_hash": pa.array(_id_hash(ids.to_pylist()))}
        for name, sl in self.tasks:
            score, best = reduce_max(total, sl)
            cols[f"score/{name}"] = pa.array(score.astype(np.float32))
            cols[f"best/{name}"] = pa.array(best.astype(np.int32))
        table = pa.table(cols)
        tmp = self.parts / f".tmp-{shard:05d}.parquet"
        pq.write_table(table, tmp)
        tmp.rename(self.parts / f"{shard:05d}.parquet")
        return {"shard": shard, "rows": table.num_rows}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import os
        import resource
        done = [self.score_shard(int(s)) for s in batch["shard"]]
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        return {"shard": np.array([d["shard"] for d in done]), "rows": np.array([d["rows"] for d in done]),
                "pid": np.array([os.getpid()] * len(done)), "peak_rss_mb": np.array([rss_mb] * len(done))}


_WIDEN_ROWS = 256  # float16 rows widened per matmul: 1 MiB of float32, cache-sized


def _windows(batches, rows: int):
    """Re-slice record batches into tables of exactly `rows` rows (the last may be shorter), so
    stores written with different row-group sizes still line up block for block."""
    import pyarrow as pa
    buf = None
    for b in batches:
        t = pa.Table.from_batches([b])
        buf = t if buf is None else pa.concat_tables([buf, t])
        while buf.num_rows >= rows:
            yield buf.slice(0, rows).combine_chunks()
            buf = buf.slice(rows)
    if buf is not None and buf.num_rows:
        yield buf.combine_chunks()


def _features(batch) -> np.ndarray:
    col = batch.column("features").combine_chunks()
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def build_queries(stores: list[CheckpointStores], tasks: list[TaskSpec], weights: list[float]) -> list[TaskQuery]:
    queries = []
    for t in tasks:
        feats, subtasks = [], None
        for ck in stores:
            data = read_store(ck.targets[t.name], ("id", "features", "subtask"))
            if subtasks is None:
                subtasks, first_ids = list(data["subtask"]), list(data["id"])
                if len(set(first_ids)) != len(first_ids):
                    raise StoreMismatch(f"task {t.name}: a target id is stored twice in {ck.targets[t.name]}")
            elif list(data["id"]) != first_ids:
                raise StoreMismatch(f"task {t.name}: target stores hold different examples ({ck.targets[t.name]})")
            feats.append(data["features"])
        queries.append(TaskQuery.build(t.name, feats, subtasks, weights))
    return queries


def resolve_weights(cfg: ScoreConfig, stores: list[CheckpointStores]) -> list[float]:
    if cfg.weights is not None:
        if len(cfg.weights) != len(cfg.pool_stores):
            raise ValueError(f"weights: {len(cfg.weights)} given for {len(cfg.pool_stores)} pool stores")
        by_path = dict(zip(cfg.pool_stores, cfg.weights))
        return list(normalize_weights([by_path[ck.pool] for ck in stores]))
    missing = [ck.pool for ck in stores if ck.avg_lr is None]
    if missing:
        raise ValueError(f"pool store(s) {missing} carry no avg_lr: give `weights` explicitly")
    return list(normalize_weights([ck.avg_lr for ck in stores]))


def run_score(cfg: ScoreConfig) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import ray

    t0 = time.time()
    if not cfg.out:
        raise ValueError("score: 'out' is required")
    stores = match_stores(cfg.pool_stores, {t.name: t.target_stores for t in cfg.tasks})
    weights = resolve_weights(cfg, stores)
    queries = build_queries(stores, cfg.tasks, weights)
    matrices, slices = stack_queries(queries)
    out = Path(cfg.out)
    parts = out / "_parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    manifest = read_manifest(stores[0].pool)
    n_shards = len(manifest.shards)
    log.info("score: %d pool rows in %d shards x %d checkpoints, tasks %s", manifest.count, n_shards, len(stores),
             [q.task for q in queries])
    seconds = {"prepare": time.time() - t0}

    t = time.time()
    cfg.join_ray()
    seconds["ray_start"] = time.time() - t
    t = time.time()
    ds = ray.data.from_items([{"shard": i} for i in range(n_shards)], override_num_blocks=max(1, n_shards))
    ds = ds.map_batches(ShardScorer, batch_size=1,
                        fn_constructor_kwargs={"pool_stores": [ck.pool for ck in stores], "matrices": matrices,
                                               "tasks": [(q.task, sl) for q, sl in zip(queries, slices)],
                                               "parts_dir": str(parts), "block_rows": cfg.block_rows,
                                               "use_gpu": cfg.actor_num_gpus > 0,
                                               "threads": max(1, int(cfg.actor_num_cpus))},
                        **cfg.map_batches_args())
    done = ds.take_all()
    if sorted(int(d["shard"]) for d in done) != list(range(n_shards)):
        raise RuntimeError(f"score: shards missing from the result: {sorted(int(d['shard']) for d in done)}")
    seconds["score_actors"] = time.time() - t
    t = time.time()
    try:
        n_pool = check_unique_ids(parts, n_shards, stores[0].pool)
    except StoreMismatch:
        shutil.rmtree(parts)
        raise
    seconds["unique_ids"] = time.time() - t
    t = time.time()

    actor_rss: dict[str, float] = {}
    for d in done:
        actor_rss[str(d["pid"])] = max(actor_rss.get(str(d["pid"]), 0.0), round(float(d["peak_rss_mb"]), 1))
    summary = {"pool_rows": n_pool, "shards": n_shards, "checkpoints": len(stores), "weights": weights,
               "actor_peak_rss_mb": actor_rss, "tasks": {}}
    for q in queries:
        task_dir = out / q.task
        task_dir.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("score", pa.float32()),
                            ("best_subtask", pa.string())])
        names = pa.array(q.subtasks, pa.string())
        tmp = task_dir / ".scores.parquet.tmp"
        with pq.ParquetWriter(tmp, schema) as w:
            for i in range(n_shards):  # one row group per shard, in pool order
                part = pq.read_table(parts / f"{i:05d}.parquet",
                                     columns=["id", "source", f"score/{q.task}", f"best/{q.task}"])
                best = pc.take(names, part.column(3))
                w.write_table(pa.table([part.column(0), part.column(1), part.column(2), best], schema=schema))
        tmp.rename(task_dir / "scores.parquet")
        summary["tasks"][q.task] = {"subtasks": q.subtasks, "scores": str(task_dir / "scores.parquet")}
    shutil.rmtree(parts)
    manifests = out / "manifests"
    manifests.mkdir(exist_ok=True)
    for k, ck in enumerate(stores):
        (manifests / f"pool_ckpt{k}.json").write_text((Path(ck.pool) / "manifest.json").read_text())
        for task, path in ck.targets.items():
            (manifests / f"{task}_ckpt{k}.json").write_text((Path(path) / "manifest.json").read_text())
    seconds["write_outputs"] = time.time() - t
    seconds["total"] = time.time() - t0
    summary["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    (out / "score_summary.json").write_text(json.dumps(summary, indent=2))
    save_config(cfg, out / "score.config.yaml")
    log.info("score: done in %.1fs", time.time() - t0)
    return summary
