"""What the report computes per task: one streamed pass over a task's scores (histogram, sources,
best-subtask counts, top and bottom examples, a seeded random sample), the random baseline of the
same size, and MinHash near-duplicates among a selection's texts."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ...core.influence import TopK
from ..minhash import NearDuplicateIndex, conversation_text, signatures
from ..seeded import RANDOM_SELECTOR, seeded_uniform
from .collect import read_json, read_yaml


def _score_range(pf, block_rows: int) -> tuple[float, float]:
    col = pf.schema_arrow.get_field_index("score")
    stats = [pf.metadata.row_group(i).column(col).statistics for i in range(pf.num_row_groups)]
    if stats and all(s is not None and s.has_min_max for s in stats):
        return float(min(s.min for s in stats)), float(max(s.max for s in stats))
    lo, hi = math.inf, -math.inf
    for b in pf.iter_batches(batch_size=block_rows, columns=["score"]):
        s = b.column("score").to_numpy()
        if len(s):
            lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
    return (lo, hi) if lo <= hi else (0.0, 1.0)


def task_statistics(scores_path: Path, k: int, n_examples: int, bins: int, block_rows: int,
                    random_seed: int | None = None) -> dict[str, Any]:
    """One pass over a task's scores: histogram, sources of the pool and of the top k, best-subtask
    counts, top and bottom examples, and (with `random_seed`) the seeded random k of the scored ids."""
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(scores_path)
    lo, hi = _score_range(pf, block_rows)
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    hist = np.zeros(bins, dtype=np.int64)
    pool_src, wins = Counter(), Counter()
    top, bottom = TopK(k), TopK(n_examples)
    rand = TopK(k) if random_seed is not None else None
    for b in pf.iter_batches(batch_size=block_rows):
        ids = np.asarray(b.column("id").to_pylist(), dtype=str)
        src = np.asarray(b.column("source").to_pylist(), dtype=object)
        score = b.column("score").to_numpy().astype(np.float64)
        hist += np.histogram(score, edges)[0]
        pool_src.update(src.tolist())
        wins.update(b.column("best_subtask").to_pylist())
        top.push(score, ids, source=src)
        bottom.push(-score, ids)
        if rand is not None:
            rand.push(seeded_uniform(ids.tolist(), random_seed), ids, source=src)
    out = {"n": pf.metadata.num_rows, "hist": hist, "edges": edges, "pool_sources": pool_src, "wins": wins,
           "top_ids": top.ids.tolist(), "top_scores": top.scores.tolist(),
           "top_sources": top.extra.get("source", np.empty(0)).tolist(),
           "bottom": list(zip(bottom.ids.tolist(), (-bottom.scores).tolist()))}
    if rand is not None:
        out["random_ids"] = rand.ids.tolist()
        out["random_sources"] = rand.extra.get("source", np.empty(0)).tolist()
    return out


def top_by_score(scores_path: Path, k: int, block_rows: int) -> tuple[list[str], list[str]]:
    """Ids and sources of a score file's top k (score desc, id asc: `select`'s order)."""
    import pyarrow.parquet as pq
    top = TopK(k)
    for b in pq.ParquetFile(scores_path).iter_batches(batch_size=block_rows, columns=["id", "source", "score"]):
        top.push(b.column("score").to_numpy().astype(np.float64), np.asarray(b.column("id").to_pylist(), dtype=str),
                 source=np.asarray(b.column("source").to_pylist(), dtype=object))
    return top.ids.tolist(), top.extra.get("source", np.empty(0)).tolist()


def run_random_folder(root: Path, run: Path | None) -> Path | None:
    """The run's `random` selector folder, when the run has one and it is not the folder reported on."""
    rdir = run / "selectors" / RANDOM_SELECTOR if run is not None else None
    if rdir is not None and rdir.resolve() != root.resolve() and (rdir / "score_summary.json").exists():
        return rdir
    return None


def random_baseline(root: Path, run: Path | None, task: str, k: int, st: dict[str, Any], seed: int,
                    block_rows: int) -> dict[str, Any]:
    """The random selection of the same size k: the run's `random` selector when it has one (its top
    k: the same ids it would select at that k; `selector`: its folder, `seed`: its seed), else the
    seeded sample computed over the scored ids (`selector`: None, `seed`, `n`: the ids scored)."""
    rdir = run_random_folder(root, run)
    if rdir is not None:
        rsum = read_json(rdir / "score_summary.json") or {}
        rtask = task if task in rsum.get("tasks", {}) else next(iter(rsum.get("tasks", {})), None)
        if rtask is not None and (rdir / rtask / "scores.parquet").exists():
            ids, sources = top_by_score(rdir / rtask / "scores.parquet", k, block_rows)
            seed_used = read_yaml(rdir / "selector.config.yaml").get("seed", rsum.get("seed"))
            return {"ids": ids, "sources": sources, "selector": rdir, "seed": seed_used, "k": k}
    return {"ids": st["random_ids"], "sources": st["random_sources"], "selector": None, "seed": seed, "k": k,
            "n": st["n"]}


def near_duplicates(items: list[tuple[str, Any]], threshold: float, ngram: int, num_perm: int,
                    of: int | None = None) -> dict[str, Any]:
    """Keep-first MinHash near-duplicates (the `dedup` stage's, in process) among `items` (id,
    messages; those without text are left out) in their order: how many duplicate an earlier one,
    and the pairs. `of`: the size of the set `items` begins (default: all of it)."""
    items = [(i, m) for i, m in items if m]
    sig = signatures([conversation_text(m) for _, m in items], ngram, num_perm, seed=1)
    index = NearDuplicateIndex(threshold, num_perm, seed=1)
    pairs = []
    for (rid, _), h in zip(items, sig):
        hit = index.add(rid, h)
        if hit is not None:
            pairs.append((rid, hit[0], hit[1]))
    return {"checked": len(items), "of": len(items) if of is None else of, "duplicates": len(pairs), "pairs": pairs,
            "groups": len({p[1] for p in pairs})}
