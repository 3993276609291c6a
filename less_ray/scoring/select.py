"""`less-ray select`: the top p% (or top n) of each task's scores, as LESS writes them.

Per task folder (from `less-ray score`):
- `top_p{p}.jsonl` / `top_n{k}.jsonl`: the selected original records, descending score;
- `sorted.csv`: `source,id,score` for the whole pool, descending (LESS's file);
- `select.config.yaml`.
The top-k is an exact streaming top-k over the score blocks (ties: smaller id first); the
sorted list is an external merge of sorted blocks, so neither holds the pool in memory.
"""
from __future__ import annotations

import csv
import heapq
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import save_config
from ..core.influence import TopK
from ..data.io import iter_records


@dataclass
class SelectConfig:
    scores: str = ""  # the score stage's output folder
    pool: str | None = None  # pool records (schema JSONL/Parquet); default: the pool store's input file
    tasks: list[str] | None = None  # default: every task in the score folder
    top_p: float | None = 0.05  # fraction of the pool (k = floor(p * N), as LESS)
    top_n: int | None = None  # or an explicit count (takes precedence)
    sorted_csv: bool = True
    block_rows: int = 65536


def selection_name(cfg: SelectConfig) -> str:
    return f"top_n{cfg.top_n}.jsonl" if cfg.top_n is not None else f"top_p{cfg.top_p:g}.jsonl"


def _score_blocks(path: Path, block_rows: int) -> Iterator[dict[str, np.ndarray]]:
    import pyarrow.parquet as pq
    for b in pq.ParquetFile(path).iter_batches(batch_size=block_rows):
        yield {"id": np.asarray(b.column("id").to_pylist(), dtype=str),
               "source": np.asarray(b.column("source").to_pylist(), dtype=object),
               "score": b.column("score").to_numpy().astype(np.float64)}


def top_k(path: Path, k: int, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    top = TopK(k)
    for blk in _score_blocks(path, block_rows):
        top.push(blk["score"], blk["id"])
    scores, ids, _ = top.result()
    return ids, scores


def write_sorted_csv(path: Path, out: Path, block_rows: int) -> int:
    """External merge sort: sort each block, spill it, merge the runs (score desc, id asc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    runs_dir = out.parent / ".sorted_runs"
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir()
    runs = []
    for i, blk in enumerate(_score_blocks(path, block_rows)):
        order = np.lexsort((blk["id"], -blk["score"]))
        run = runs_dir / f"{i:05d}.parquet"
        pq.write_table(pa.table({"source": blk["source"][order].tolist(), "id": blk["id"][order].tolist(),
                                 "score": blk["score"][order]}), run)
        runs.append(run)

    def rows(run: Path):
        for b in pq.ParquetFile(run).iter_batches(batch_size=8192):
            yield from zip(b.column("score").to_pylist(), b.column("id").to_pylist(), b.column("source").to_pylist())

    n = 0
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "id", "score"])
        for score, rid, source in heapq.merge(*(rows(r) for r in runs), key=lambda t: (-t[0], t[1])):
            w.writerow([source, rid, repr(score)])
            n += 1
    tmp.replace(out)
    shutil.rmtree(runs_dir)
    return n


def pool_file(scores_dir: str, pool: str | None) -> str:
    """The pool records file: given, else the one the score folder records (LESS: the pool store's input)."""
    if pool:
        return pool
    mdir = Path(scores_dir) / "manifests"
    found = [p for p in (mdir / "pool_ckpt0.json", mdir / "pool.json") if p.exists()]
    path = json.loads(found[0].read_text()).get("input", {}).get("path") if found else None
    if not path:
        raise ValueError("select: the pool store records no input file; give `pool` explicitly")
    return path


def write_selection(pool: str, ids: np.ndarray, scores: np.ndarray, out: Path) -> int:
    """The selected records in descending score order, each with its score (one pass over the pool)."""
    rank = {rid: i for i, rid in enumerate(ids.tolist())}
    found: list[Any] = [None] * len(rank)
    for rec in iter_records(pool):
        i = rank.get(rec.id)
        if i is not None:
            found[i] = rec
    missing = [rid for rid, i in rank.items() if found[i] is None]
    if missing:
        raise ValueError(f"select: {len(missing)} selected id(s) are not in the pool file {pool}: {missing[:5]}")
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec, score in zip(found, scores.tolist()):
            fh.write(json.dumps({**rec.to_dict(), "score": score}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(found)


def run_select(cfg: SelectConfig) -> dict[str, Any]:
    import pyarrow.parquet as pq
    root = Path(cfg.scores)
    summary = json.loads((root / "score_summary.json").read_text())
    tasks = cfg.tasks or list(summary["tasks"])
    if cfg.top_n is None and (cfg.top_p is None or not 0 < cfg.top_p <= 1):
        raise ValueError(f"select: top_p must be in (0, 1], got {cfg.top_p}")
    pool = pool_file(cfg.scores, cfg.pool)
    result = {}
    for task in tasks:
        scores_path = root / task / "scores.parquet"
        n = pq.ParquetFile(scores_path).metadata.num_rows
        k = min(n, cfg.top_n) if cfg.top_n is not None else int(math.floor(cfg.top_p * n + 1e-9))
        ids, scores = top_k(scores_path, k, cfg.block_rows)
        sel = root / task / selection_name(cfg)
        write_selection(pool, ids, scores, sel)
        info = {"selected": k, "pool": n, "file": str(sel)}
        if cfg.sorted_csv:
            write_sorted_csv(scores_path, root / task / "sorted.csv", cfg.block_rows)
            info["sorted_csv"] = str(root / task / "sorted.csv")
        save_config(cfg, root / task / "select.config.yaml")
        result[task] = info
    return result
