"""`less-ray score`: LESS influence of every pool example on every target task, on Ray Data.

Ray Data runs one `ShardScorer` actor pool over the pool's shard indices. An actor reads shard i
of every checkpoint's pool store in lockstep (the stores share one id layout; each shard's ids
are checked equal, so this is a merge join on id), multiplies each block by the small
per-checkpoint [ΣS, d] matrix of weighted subtask-mean target features (core.influence), and
writes the shard's scores and id hashes. Feature memory per actor is one record batch per
store (at most `store.BATCH_BYTES`); ids and scores are bounded by the shard. The work is IO bound (ΣS is a few dozen columns): the shards are
Arrow IPC files, whose features pyarrow reads one record batch at a time with no decoding
(`store.shard_batches`); they are used in place and widened to float32 in cache-sized chunks.
The driver then checks id uniqueness from the hashes, and only then streams
the parts into one `scores.parquet` per task.

Verify on read (`verify`, on by default): each pool shard's sha256 is checked against its manifest
(an actor hashes the shard's files in a thread while it scores them, so hashing overlaps disk
reads and, on GPU actors, the matmul; nothing of a shard is written, and no other error is
reported for it, before its checksum is known), every features row is checked finite and, in normalised stores, of unit norm
(the norm is taken from the float32 rows the matmul widens anyway), and every subtask score must
lie in [-1, 1] (within float16 rounding) when the stores are normalised, as a weighted cosine with
weights summing to 1 must. Targets are read through `store.read_store`, which checks the same. A
failure is a `StoreIntegrityError` naming the shard (and row) and how to repair it; errors found
in actors come back as values and are raised by the driver, not as Ray's wrapped traceback.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import storage
from ..config import save_config, path_field
from ..core.influence import TaskQuery, normalize_weights, reduce_max, stack_queries
from ..ray_runtime import RayStage
from ..run_lock import locked
from ..shards import map_shards
from ..selection.folder import ScoreFolderWriter
from ..store import (NORM_TOL, FeatureRows, StoreIntegrityError, bad_feature_rows, feature_columns, feature_error,
                     feature_rows, local_shard, read_manifest, read_shard, read_store, shard_batches, shard_path,
                     verify_shard_checksum)
from .stores import CheckpointStores, StoreMismatch, match_stores

# |score| of unit rows (within NORM_TOL) against weighted means of unit rows, plus float32 rounding
SCORE_BOUND = 1.0 + NORM_TOL + 1e-3

log = logging.getLogger("less_ray")


@dataclass
class TaskSpec:
    name: str
    target_stores: list[str] = path_field("in")  # sgd stores of this task's targets, one per checkpoint (any order)


@dataclass
class ScoreConfig(RayStage):
    pool_stores: list[str] = path_field("in", [])  # adam stores of the pool, one per checkpoint
    tasks: list[TaskSpec] = field(default_factory=list)
    out: str = path_field("out", "")
    weights: list[float] | None = None  # per pool store; default: the checkpoints' avg_lr; normalised to sum 1
    block_rows: int = 65536
    # check pool and target shards against their manifests' sha256, rows finite / of unit norm,
    # and scores within [-1, 1] for normalised stores (see the module docstring for its cost)
    verify: bool = True
    # a target subtask whose every example was skipped by extract: refused unless allowed
    allow_missing_subtasks: bool = False
    # also write each task's per-subtask scores (<task>/subtask_scores.parquet, 4 bytes a row and
    # subtask): what `select --set order=round_robin` takes turns over
    subtask_scores: bool = False


def _id_hash(ids) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


def _read_part(path, columns: list[str]):
    import pyarrow.parquet as pq
    with storage.fetched(path) as local:
        return pq.read_table(local, columns=columns)


def check_unique_pool_ids(parts, n_shards: int, pool_store: str) -> int:
    """Refuse a pool that holds an id twice. The actors hash each shard's ids (8 bytes per row,
    column `id_hash` of its part) while scoring, so this costs no extra pass over the store;
    the ids are named from the parts only on failure."""
    files = [parts / f"{i:05d}.parquet" for i in range(n_shards)]
    h = np.concatenate([_read_part(f, ["id_hash"]).column(0).to_numpy() for f in files]
                       or [np.empty(0, np.uint64)])
    s = np.sort(h)
    dup = set(s[1:][s[1:] == s[:-1]].tolist())
    if dup:
        names = set()
        for f in files:
            t = _read_part(f, ["id", "id_hash"])
            names |= {i for i, x in zip(t.column(0).to_pylist(), t.column(1).to_pylist()) if x in dup}
        raise StoreMismatch(f"{pool_store}: id(s) stored more than once: {sorted(names)[:10]}")
    return len(h)


class ShardScorer:
    """Ray Data actor: scores whole shards (one batch row = one shard index)."""

    def __init__(self, pool_stores: list[str], matrices: list[np.ndarray], tasks: list[tuple[str, slice]],
                 parts_dir: str, block_rows: int, use_gpu: bool = False, threads: int = 1, verify: bool = True,
                 subtask_scores: bool = False):
        import torch
        torch.set_num_threads(max(1, threads))
        manifests = [read_manifest(s) for s in pool_stores]
        self.entries = [m.shards for m in manifests]
        self.files = [[shard_path(s, e) for e in m.shards] for s, m in zip(pool_stores, manifests)]
        self.normalized = [m.normalized for m in manifests]
        self.dims = [m.projection.dim for m in manifests]
        self.dtypes = [m.dtype for m in manifests]
        self.verify, self.subtask_scores = verify, subtask_scores
        if verify:
            from concurrent.futures import ThreadPoolExecutor
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="shard-sha256")
        self.pool_stores = pool_stores
        self.tasks = tasks
        self.parts = storage.location(parts_dir)
        self.block_rows = block_rows
        self.device = torch.device("cuda" if use_gpu else "cpu")
        # zero rows up to a multiple of 8 columns: the matmul kernels run ~25% faster at 32 than 27
        pad = -len(matrices[0]) % 8
        self.matrices = [torch.tensor(np.pad(m, ((0, pad), (0, 0))), dtype=torch.float32, device=self.device)
                         for m in matrices]

    def _accumulate(self, out, rows: FeatureRows, c: int, norms=None) -> None:
        """out += features @ M_cᵀ (and, given `norms`, each row's L2 norm into it). Stored rows are
        widened (float16) or decoded (coded dtypes) to float32 a few hundred at a time, so the
        converted copy stays in cache instead of a second [rows, d] array in memory; the norm is
        taken from that copy."""
        import torch
        m_t = self.matrices[c].T
        if self.device.type != "cpu":
            xf = _widened(rows, self.device)
            out += (xf @ m_t).cpu()
            if norms is not None:
                norms.copy_(torch.linalg.vector_norm(xf, dim=1).cpu())
            return
        for lo in range(0, len(rows), _WIDEN_ROWS):
            xf = _widened(rows[lo:lo + _WIDEN_ROWS], self.device)
            out[lo:lo + _WIDEN_ROWS].addmm_(xf, m_t)
            if norms is not None:
                torch.linalg.vector_norm(xf, dim=1, out=norms[lo:lo + _WIDEN_ROWS])

    def _feature_blocks(self, c: int, shard: int, local):
        """Feature rows of one store's shard as pyarrow reads them (views of its record batches,
        no copy, no decoding yet), at most `block_rows` rows each."""
        path, dim, dtype = self.files[c][shard], self.dims[c], self.dtypes[c]
        for batch in shard_batches(local, feature_columns(dtype), path):
            rows = feature_rows(batch, dtype, dim, path)
            for lo in range(0, len(rows), self.block_rows):
                yield rows[lo:lo + self.block_rows]

    def _verify_checksums(self, shard: int, local: list) -> None:
        for c, store in enumerate(self.pool_stores):
            verify_shard_checksum(store, self.entries[c][shard], local[c])

    def score_shard(self, shard: int) -> dict[str, Any]:
        import contextlib

        import pyarrow.parquet as pq
        with contextlib.ExitStack() as stack:  # remote shards: each store's fetched once, to the spool
            local = [stack.enter_context(local_shard(s, self.entries[c][shard]))[1]
                     for c, s in enumerate(self.pool_stores)]
            check = self._hasher.submit(self._verify_checksums, shard, local) if self.verify else None
            try:
                table = self._score(shard, local)
            except Exception:
                if check is not None:
                    check.result()  # a damaged shard is reported as damaged, whatever it broke downstream
                raise
            if check is not None:
                check.result()  # nothing of the shard is written before its bytes verify
        final = self.parts / f"{shard:05d}.parquet"
        tmp = storage.spool_file(final)
        pq.write_table(table, tmp)
        storage.upload(tmp, final)
        return {"shard": shard, "rows": table.num_rows}

    def _score(self, shard: int, local: list):
        """The shard's part table (ids, sources, id hashes, per task score and best subtask);
        `local`: each store's shard file (a fetched copy of a remote one)."""
        import pyarrow as pa
        import torch
        head = read_shard(local[0], ["id", "source"])
        ids = head.column("id").combine_chunks()
        for c in range(1, len(self.files)):  # the stores share one id layout: a merge join on id
            other = read_shard(local[c], ["id"]).column(0).combine_chunks()
            if not other.equals(ids):
                a, b = ids.to_pylist(), other.to_pylist()
                row = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                raise StoreMismatch(
                    f"shard {shard} ({self.files[c][shard]}) row {row}: {self.pool_stores[c]} holds "
                    f"{b[row] if row < len(b) else 'no row'!r} where {self.pool_stores[0]} holds "
                    f"{a[row] if row < len(a) else 'no row'!r} ({len(b)} vs {len(a)} rows): the pool stores are not "
                    "aligned; extract every checkpoint from the same pool file (an id stored twice in one store "
                    "shows here too)")
        n = len(ids)
        total = torch.zeros((n, self.matrices[0].shape[0]), dtype=torch.float32)
        norms = torch.empty(n, dtype=torch.float32) if self.verify else None
        row = 0
        readers = [self._feature_blocks(c, shard, local[c]) for c in range(len(self.files))]
        for blocks in _aligned(readers, shard):
            rows = len(blocks[0])
            if any(len(b) != rows for b in blocks) or row + rows > n:
                raise StoreMismatch(f"shard {shard}: feature rows of the pool stores do not line up with their ids")
            for c, b in enumerate(blocks):
                nc = None if norms is None else norms[row:row + rows]
                self._accumulate(total[row:row + rows], b, c, nc)
                if nc is not None:
                    sumsq = nc.numpy().astype(np.float64) ** 2
                    bad = bad_feature_rows(sumsq, self.normalized[c])
                    if len(bad):
                        r = row + int(bad[0])
                        raise feature_error(self.files[c][shard], r, ids[r].as_py(), float(sumsq[bad[0]]),
                                            self.normalized[c])
            row += rows
        if row != n:
            raise StoreMismatch(f"shard {shard}: {row} feature rows for {n} ids")
        total = total.numpy()
        if self.verify:
            self._check_scores(total, shard, ids)
        cols = {"id": ids, "source": head.column("source").combine_chunks(), "id_hash": pa.array(_id_hash(ids.to_pylist()))}
        for name, sl in self.tasks:
            score, best = reduce_max(total, sl)
            cols[f"score/{name}"] = pa.array(score.astype(np.float32))
            cols[f"best/{name}"] = pa.array(best.astype(np.int32))
            if self.subtask_scores:
                for j in range(sl.stop - sl.start):
                    cols[f"sub/{name}/{j}"] = pa.array(total[:, sl.start + j].astype(np.float32))
        return pa.table(cols)

    def _check_scores(self, total: np.ndarray, shard: int, ids) -> None:
        """Every subtask score finite, and within [-1, 1] (plus rounding) for normalised stores."""
        bound = SCORE_BOUND if all(self.normalized) else np.inf
        ok = np.isfinite(total).all(axis=1) & (np.abs(total) <= bound).all(axis=1)
        if not ok.all():
            r = int(np.flatnonzero(~ok)[0])
            worst = total[r][np.argmax(np.where(np.isfinite(total[r]), np.abs(total[r]), np.inf))]
            raise StoreIntegrityError(
                f"shard {shard} ({', '.join(str(f[shard]) for f in self.files)}) row {r} (id {ids[r].as_py()!r}) "
                f"scores {worst:.6g}, outside [-1, 1] that a weighted cosine of unit features allows: a store or "
                "a target store is damaged; rerun `less-ray extract` for the stores named (it rewrites every "
                "shard that does not verify)")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import os
        import resource
        done = []
        for s in batch["shard"]:
            try:
                done.append({**self.score_shard(int(s)), "error": ""})
            except (StoreIntegrityError, StoreMismatch) as e:  # a value, raised cleanly by the driver
                done.append({"shard": int(s), "rows": 0, "error": f"{type(e).__name__}\t{e}"})
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        return {"shard": np.array([d["shard"] for d in done]), "rows": np.array([d["rows"] for d in done]),
                "error": np.array([d["error"] for d in done], dtype=object),
                "pid": np.array([os.getpid()] * len(done)), "peak_rss_mb": np.array([rss_mb] * len(done))}


_WIDEN_ROWS = 256  # float16 rows widened per matmul: 1 MiB of float32, cache-sized


def _widened(rows: FeatureRows, device):
    """float32 torch rows on `device`: float stores converted by torch (a read-only view of the
    record batch, read here, never written), coded ones decoded (core/quantize.py)."""
    import warnings

    import torch
    if rows.scale is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(rows.values).to(device).float()
    return torch.from_numpy(rows.widen()).to(device)


def _aligned(readers, shard: int):
    """Blocks of every store's reader cut at common row offsets (views, no copy), so stores whose
    shards were written in other record batch sizes still line up row for row."""
    its = [iter(r) for r in readers]
    cur = [() for _ in its]  # () : this reader's next block is still to be read
    while True:
        for i, it in enumerate(its):
            while cur[i] is not None and not len(cur[i]):
                cur[i] = next(it, None)
        if all(b is None for b in cur):
            return
        if any(b is None for b in cur):
            raise StoreMismatch(f"shard {shard}: feature rows of the pool stores do not line up with their ids")
        rows = min(len(b) for b in cur)
        yield [b[:rows] for b in cur]
        cur = [b[rows:] for b in cur]


def vanished_subtasks(store: str, stored: set[str]) -> dict[str, int]:
    """Subtasks of a target store's input whose every example extract skipped: {subtask: skipped}.
    Read from the input file the manifest names (skipped ids listed in its skipped.jsonl); {} when
    nothing was skipped, or (with a warning) when the input is gone or changed."""
    from collections import Counter

    from ..data.io import iter_records
    from ..artifact import sha256_file
    man = read_manifest(store)
    if not (man.skipped or {}).get("count"):
        return {}
    src = man.input.get("path")
    if not src or not Path(src).is_file() or (man.input.get("sha256") and sha256_file(src) != man.input["sha256"]):
        log.warning("score: %s: %d target(s) were skipped and the input %s is gone or changed: cannot check "
                    "for subtasks left without targets", store, man.skipped["count"], src)
        return {}
    skipped_file = storage.location(store) / "skipped.jsonl"
    skipped = {json.loads(x)["id"] for x in skipped_file.read_text().splitlines() if x.strip()} \
        if skipped_file.is_file() else set()
    per_subtask: Counter = Counter()
    for rec in iter_records(src):
        if rec.id in skipped:
            per_subtask[rec.subtask or ""] += 1
    return {s: n for s, n in per_subtask.items() if s not in stored}


def build_queries(stores: list[CheckpointStores], tasks: list[TaskSpec], weights: list[float],
                  verify: bool = True, allow_missing_subtasks: bool = False) -> list[TaskQuery]:
    queries = []
    for t in tasks:
        feats, subtasks = [], None
        for ck in stores:
            data = read_store(ck.targets[t.name], ("id", "features", "subtask"), verify=verify)
            if len(data["id"]) == 0:
                raise StoreMismatch(f"task {t.name}: target store {ck.targets[t.name]} holds no examples "
                                    "(every target was skipped by extract, see its skipped.jsonl): nothing to score against")
            if subtasks is None:
                gone = vanished_subtasks(ck.targets[t.name], {s or "" for s in data["subtask"]})
                if gone:
                    msg = (f"task {t.name}: subtask(s) {sorted(gone)} have no target left: extract skipped all their "
                           f"examples ({', '.join(f'{s}: {n}' for s, n in sorted(gone.items()))}; reasons in "
                           f"{storage.location(ck.targets[t.name]) / 'skipped.jsonl'})")
                    if not allow_missing_subtasks:
                        raise StoreMismatch(msg + "; raise max_seq_length, drop them from the targets, or set "
                                            "allow_missing_subtasks to score without them")
                    log.warning("score: %s; scoring without them (allow_missing_subtasks)", msg)
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


@locked("score")  # one writer per out folder (less_ray/run_lock.py)
def run_score(cfg: ScoreConfig) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.compute as pc

    t0 = time.time()
    if not cfg.out:
        raise ValueError("score: 'out' is required")
    stores = match_stores(cfg.pool_stores, {t.name: t.target_stores for t in cfg.tasks})
    weights = resolve_weights(cfg, stores)
    queries = build_queries(stores, cfg.tasks, weights, cfg.verify, cfg.allow_missing_subtasks)
    matrices, slices = stack_queries(queries)
    out = storage.location(cfg.out)
    # the folder's summary goes first and is written last: a rerun killed half-way (some tasks'
    # scores rewritten, others not) leaves a folder that nothing takes for a finished one
    (out / "score_summary.json").unlink(missing_ok=True)
    parts = out / "_parts"
    storage.rmtree(parts)
    if not storage.is_remote(parts):
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
    done = map_shards(cfg, ShardScorer, {"pool_stores": [ck.pool for ck in stores], "matrices": matrices,
                                         "tasks": [(q.task, sl) for q, sl in zip(queries, slices)],
                                         "parts_dir": str(parts), "block_rows": cfg.block_rows,
                                         "use_gpu": cfg.actor_num_gpus > 0,
                                         "threads": max(1, int(cfg.actor_num_cpus)), "verify": cfg.verify,
                                         "subtask_scores": cfg.subtask_scores},
                      list(range(n_shards)), "score", knobs="score.block_rows or max_actors")
    errors = sorted((int(d["shard"]), str(d["error"])) for d in done if d["error"])
    if errors:
        storage.rmtree(parts)
        kind, msg = errors[0][1].split("\t", 1)
        more = f" ({len(errors) - 1} more shard(s) failed too: {[s for s, _ in errors[1:]][:10]})" if len(errors) > 1 else ""
        raise (StoreIntegrityError if kind == "StoreIntegrityError" else StoreMismatch)(msg + more)
    seconds["score_actors"] = time.time() - t
    t = time.time()
    try:
        n_pool = check_unique_pool_ids(parts, n_shards, stores[0].pool)
    except StoreMismatch:
        storage.rmtree(parts)
        raise
    seconds["unique_ids"] = time.time() - t
    t = time.time()

    actor_rss: dict[str, float] = {}
    for d in done:
        actor_rss[str(d["pid"])] = max(actor_rss.get(str(d["pid"]), 0.0), round(float(d["peak_rss_mb"]), 1))
    summary = {"pool_rows": n_pool, "shards": n_shards, "checkpoints": len(stores), "weights": weights,
               "actor_peak_rss_mb": actor_rss, "tasks": {q.task: {"subtasks": q.subtasks} for q in queries}}
    writer = ScoreFolderWriter(out, [q.task for q in queries])  # the score folder every selector writes
    for q in queries:
        names = pa.array(q.subtasks, pa.string())
        sub = [f"sub/{q.task}/{j}" for j in range(len(q.subtasks))] if cfg.subtask_scores else []
        for i in range(n_shards):  # one row group per shard, in pool order
            part = _read_part(parts / f"{i:05d}.parquet", ["id", "source", f"score/{q.task}", f"best/{q.task}", *sub])
            writer.write(q.task, part.column(0), part.column(1), part.column(2), pc.take(names, part.column(3)),
                         {s: part.column(c).to_numpy() for s, c in zip(q.subtasks, sub)} if sub else None)
    storage.rmtree(parts)
    manifests = out / "manifests"
    for k, ck in enumerate(stores):
        storage.write_atomic(manifests / f"pool_ckpt{k}.json", (storage.location(ck.pool) / "manifest.json").read_text())
        for task, path in ck.targets.items():
            storage.write_atomic(manifests / f"{task}_ckpt{k}.json", (storage.location(path) / "manifest.json").read_text())
    save_config(cfg, out / "score.config.yaml")
    seconds["write_outputs"] = time.time() - t
    seconds["total"] = time.time() - t0
    summary["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    summary = writer.close(summary)  # the score files into place, then score_summary.json, last
    log.debug("score: done in %.1fs", time.time() - t0)
    return summary
