"""`less-ray select`: the top p% (or top n) of each task's scores, as LESS writes them.

Per task folder (from `less-ray score`):
- `top_p{p}.jsonl` / `top_n{k}.jsonl`: the selected original records, descending score;
- `sorted.csv`: `source,id,score` for the whole pool, descending (LESS's file);
- `selection.json`: the size rule used (`{"rule": {...}}`: rule, formula, p, N, scored, k);
- `select.config.yaml`.
The size k comes from `selection_count`, the one rule every selector uses: N is every record
of the pool file (skipped and unscored ones included, as LESS's N counts every line), k =
floor(p·N + 1e-9) (`count_rule: floor`) or LESS's `int(p·N)` (`count_rule: less`, which
reproduces LESS's `top_p*.jsonl` line counts, float rounding included: int(0.29·100) = 28), and
never more than the rows scored.
The top-k is an exact streaming top-k over the score blocks (ties: smaller id first); the
sorted list is an external merge of sorted blocks, so neither holds the pool in memory.

`order: round_robin` ranks by the task's subtasks taking turns instead (RDS+'s and Ivison et
al.'s multi-task selection; `core.round_robin`): each subtask in turn adds its best example not
yet selected, from `<task>/subtask_scores.parquet` (written by `score` / `rds` with
`subtask_scores: true`). Its files are `top_p{p}.round_robin.jsonl` and `sorted.round_robin.csv`
(score = -(round x subtasks + subtask index)), beside the max-order ones; `selection.json` names
the latest. It holds a few arrays of the pool's length in memory (not the pool's features).
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

from .. import storage
from ..config import config_to_dict, save_config, path_field
from ..artifact import sha256_file
from ..core.influence import TopK
from ..data.io import iter_records
from .folder import SUBTASK_SCORES, score_blocks


@dataclass
class SelectConfig:
    scores: str = path_field("in", "")  # the score stage's output folder
    pool: str | None = path_field("in", None)  # pool records (schema JSONL/Parquet); default: the pool store's input file
    tasks: list[str] | None = None  # default: every task in the score folder
    top_p: float | None = 0.05  # fraction of the pool file's records (k: selection_count)
    top_n: int | None = None  # or an explicit count (takes precedence)
    count_rule: str = "floor"  # floor: floor(p·N + 1e-9) | less: LESS's int(p·N)
    sorted_csv: bool = True
    block_rows: int = 65536
    # score: the task's score, descending (LESS: the max over its subtasks) | round_robin: the task's
    # subtasks take turns, each adding its best example not yet selected (needs subtask_scores.parquet)
    order: str = "score"


ORDERS = ("score", "round_robin")
COUNT_RULES = {"floor": "k = floor(p·N + 1e-9)", "less": "k = int(p·N) (LESS's write_selected_data)"}


def selection_count(top_p: float | None, top_n: int | None, n_pool: int, n_scored: int | None = None,
                    rule: str = "floor") -> int:
    """k, for every selector: `top_n`, else p of the pool's N records by `rule`; at most the rows
    scored (`n_scored`, default N)."""
    if rule not in COUNT_RULES:
        raise ValueError(f"count_rule must be one of {', '.join(COUNT_RULES)}, got {rule!r}")
    cap = n_pool if n_scored is None else min(n_scored, n_pool)
    if top_n is not None:
        if top_n < 0:
            raise ValueError(f"top_n must be >= 0, got {top_n}")
        return min(cap, int(top_n))
    if top_p is None or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    k = int(top_p * n_pool) if rule == "less" else int(math.floor(top_p * n_pool + 1e-9))
    return min(cap, k)


def count_record(top_p: float | None, top_n: int | None, n_pool: int, n_scored: int, k: int, rule: str) -> dict:
    """The size rule as `selection.json` records it (the report shows it)."""
    if top_n is not None:
        return {"rule": "top_n", "formula": "k = min(n, scored)", "n": top_n, "N": n_pool, "scored": n_scored, "k": k}
    return {"rule": rule, "formula": COUNT_RULES[rule], "p": top_p, "N": n_pool,
            "N_is": "every record of the pool file", "scored": n_scored, "k": k}


def pool_size(pool: str | list[str]) -> int:
    """N: the records of the pool (one file, or a grown store's files), by the one row counter."""
    from ..data.count import count_records
    return count_records(pool) if isinstance(pool, str) else sum(count_records(p) for p in pool)


def selection_name(cfg: SelectConfig) -> str:
    stem = f"top_n{cfg.top_n}" if cfg.top_n is not None else f"top_p{cfg.top_p:g}"
    return f"{stem}.jsonl" if cfg.order == "score" else f"{stem}.{cfg.order}.jsonl"


def round_robin_ranking(scores_path: Path, subtask_path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(ids, score = -round-robin key) over the whole pool from a task's subtask scores (one column
    read at a time: memory a few arrays of the pool's length), and what it used."""
    import pyarrow.parquet as pq

    from ..core.round_robin import RoundRobin, key_scores
    pf = pq.ParquetFile(subtask_path)
    subtasks = [n for n in pf.schema_arrow.names if n != "id"]
    ids = pq.read_table(subtask_path, columns=["id"]).column(0).combine_chunks()
    if not ids.equals(pq.read_table(scores_path, columns=["id"]).column(0).combine_chunks()):
        raise ValueError(f"{subtask_path}: its ids are not {scores_path}'s, row for row; rescore the task")
    rr = RoundRobin(len(ids))
    for name in subtasks:  # the score stage's subtask order: the turn order
        rr.add(pq.read_table(subtask_path, columns=[name]).column(0).to_numpy().astype(np.float64))
    keys, _ = rr.keys()
    score, exact = key_scores(keys)
    return np.asarray(ids.to_pylist(), dtype=str), score, {"subtasks": subtasks, "exact_positions": exact}


def write_sorted_rows(ids: np.ndarray, sources: np.ndarray, scores: np.ndarray, out) -> int:
    """sorted.csv from whole-pool arrays already in memory (the round-robin order)."""
    order = np.lexsort((ids, -scores))
    tmp = storage.spool_file(out)
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "id", "score"])
        for i in order:
            w.writerow([sources[i], ids[i], repr(float(scores[i]))])
    storage.upload(tmp, out)
    return len(order)


def top_k(path: Path, k: int, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    top = TopK(k)
    for blk in score_blocks(path, block_rows):
        top.push(blk["score"], blk["id"])
    scores, ids, _ = top.result()
    return ids, scores


def write_sorted_csv(path: Path, out: Path, block_rows: int) -> int:
    """External merge sort: sort each block, spill it, merge the runs (score desc, id asc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    runs_dir = storage.spool_file(out.parent / ".sorted_runs")  # local scratch, whatever `out` is
    shutil.rmtree(runs_dir, ignore_errors=True)
    runs_dir.mkdir(parents=True)
    runs = []
    for i, blk in enumerate(score_blocks(path, block_rows)):
        order = np.lexsort((blk["id"], -blk["score"]))
        run = runs_dir / f"{i:05d}.parquet"
        pq.write_table(pa.table({"source": blk["source"][order].tolist(), "id": blk["id"][order].tolist(),
                                 "score": blk["score"][order]}), run)
        runs.append(run)

    def rows(run: Path):
        for b in pq.ParquetFile(run).iter_batches(batch_size=8192):
            yield from zip(b.column("score").to_pylist(), b.column("id").to_pylist(), b.column("source").to_pylist())

    n = 0
    tmp = storage.spool_file(out)
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["source", "id", "score"])
        for score, rid, source in heapq.merge(*(rows(r) for r in runs), key=lambda t: (-t[0], t[1])):
            w.writerow([source, rid, repr(score)])
            n += 1
    storage.upload(tmp, out)
    shutil.rmtree(runs_dir)
    return n


def pool_file(scores_dir: str, pool: str | None) -> str | list[str]:
    """The pool records file: given, else the one the score folder records (LESS: the pool store's
    input; a store grown by `extract --append`: its files in order, a list)."""
    if pool:
        return pool
    mdir = storage.location(scores_dir) / "manifests"
    found = [p for p in (mdir / "pool_ckpt0.json", mdir / "pool.json") if p.exists()]
    recorded = json.loads(found[0].read_text()).get("input", {}) if found else {}
    path = recorded.get("path")
    if not path:
        raise ValueError("select: the pool store records no input file; give `pool` explicitly")
    appended = [a["path"] for a in recorded.get("appended") or []]
    return [path, *appended] if appended else path


def pool_records(pool: str | list[str]) -> Iterator[Any]:
    """The records of a pool given as one file or as a store's files in order."""
    for path in [pool] if isinstance(pool, str) else pool:
        yield from iter_records(path)


def write_selection(pool: str | list[str], ids: np.ndarray, scores: np.ndarray, out) -> str:
    """The selected records in descending score order, each with its score (one pass over the
    pool), written to `out`; returns the file's sha256 (taken before an upload)."""
    rank = {rid: i for i, rid in enumerate(ids.tolist())}
    found: list[Any] = [None] * len(rank)
    for rec in pool_records(pool):
        i = rank.get(rec.id)
        if i is not None:
            found[i] = rec
    missing = [rid for rid, i in rank.items() if found[i] is None]
    if missing:
        raise ValueError(f"select: {len(missing)} selected id(s) are not in the pool file {pool}: {missing[:5]}")
    tmp = storage.spool_file(out)
    with open(tmp, "w", encoding="utf-8") as fh:
        for rec, score in zip(found, scores.tolist()):
            fh.write(json.dumps({**rec.to_dict(), "score": score}, ensure_ascii=False) + "\n")
    digest = sha256_file(tmp)
    storage.upload(tmp, out)
    return digest


SELECTION_MANIFEST = "selection.json"


def write_selection_manifest(task_dir: Path, manifest: dict[str, Any]) -> None:
    storage.write_atomic(task_dir / SELECTION_MANIFEST, json.dumps(manifest, indent=1))  # last: its file is complete


def read_selection_manifest(task_dir: str | Path) -> dict[str, Any]:
    """What `select` (or any selector's select) wrote for a task: the selection file (absolute
    `path`), k, the size rule and the config; train, report and the demo read these instead of
    re-deriving them. Refuses a selection file changed since."""
    task_dir = storage.location(task_dir)
    path = task_dir / SELECTION_MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no selection here; run `less-ray select --scores {task_dir.parent}` first")
    man = json.loads(path.read_text())
    man["path"] = str(task_dir / man["file"])
    want = man.get("selection_sha256")
    if want and sha256_file(man["path"]) != want:
        raise ValueError(f"{man['path']}: changed since select wrote it (sha256 differs from {path}); rerun select")
    return man


def run_select(cfg: SelectConfig) -> dict[str, Any]:
    import pyarrow.parquet as pq
    root = storage.location(cfg.scores)
    summary = json.loads((root / "score_summary.json").read_text())
    tasks = cfg.tasks or list(summary["tasks"])
    if cfg.top_n is None and (cfg.top_p is None or not 0 < cfg.top_p <= 1):
        raise ValueError(f"select: top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.order not in ORDERS:
        raise ValueError(f"select: order must be one of {ORDERS}, not {cfg.order!r}")
    pool = pool_file(cfg.scores, cfg.pool)
    n_pool = pool_size(pool)
    result = {}
    for task in tasks:
        with storage.fetched(root / task / "scores.parquet") as scores_path:  # remote: read once, locally
            n = pq.ParquetFile(scores_path).metadata.num_rows
            k = selection_count(cfg.top_p, cfg.top_n, n_pool, n, cfg.count_rule)
            extra: dict[str, Any] = {}
            if cfg.order == "round_robin":
                sub = root / task / SUBTASK_SCORES
                if not storage.location(sub).exists():
                    raise FileNotFoundError(f"{sub}: select order=round_robin needs each subtask's scores; score "
                                            "with subtask_scores: true (less-ray score --set subtask_scores=true)")
                with storage.fetched(sub) as sub_path:
                    all_ids, rr_score, extra["round_robin"] = round_robin_ranking(scores_path, sub_path)
                    extra["subtask_scores_sha256"] = sha256_file(sub_path)
                first = np.lexsort((all_ids, -rr_score))[:k]
                ids, scores = all_ids[first], rr_score[first]
            else:
                ids, scores = top_k(scores_path, k, cfg.block_rows)
            sel = root / task / selection_name(cfg)
            selected = write_selection(pool, ids, scores, sel)
            rule = count_record(cfg.top_p, cfg.top_n, n_pool, n, k, cfg.count_rule)
            write_selection_manifest(root / task, {
                "file": sel.name, "k": k, "rule": rule, "order": cfg.order, "pool": str(pool),
                "scores_sha256": sha256_file(scores_path), "selection_sha256": selected, **extra,
                "config": config_to_dict(cfg)})
            info = {"selected": k, "pool": n_pool, "scored": n, "rule": rule, "order": cfg.order, "file": str(sel),
                    **extra}
            if cfg.sorted_csv:
                csv_name = "sorted.csv" if cfg.order == "score" else f"sorted.{cfg.order}.csv"
                if cfg.order == "score":
                    write_sorted_csv(scores_path, root / task / csv_name, cfg.block_rows)
                else:
                    sources = pq.read_table(scores_path, columns=["source"]).column(0).to_numpy(zero_copy_only=False)
                    write_sorted_rows(all_ids, np.asarray(sources, dtype=object), rr_score, root / task / csv_name)
                info["sorted_csv"] = str(root / task / csv_name)
        save_config(cfg, root / task / "select.config.yaml")
        result[task] = info
    return result
