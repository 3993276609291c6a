"""`less-ray select --diverse`: diversity-aware top-k over a LESS score folder.

LESS's paper notes that duplicates score alike and are selected twice. Here candidates are walked
in descending score (ties: smaller id first, as `core.influence.TopK`) and a candidate is skipped
when the cosine of its pool gradient feature to an already selected one exceeds `threshold`, until
k = select's selection_count (p of the pool file's records, or `top_n`) are selected. `threshold >= 1` turns the check off: plain top-k.

Features: the pool datastores the score folder was made from (`score.config.yaml`'s pool_stores, or
`feature_stores`). `features: first` uses the first checkpoint's store; `all` concatenates every
checkpoint's (unit) features and re-normalises, so the cosine is the mean of the per-checkpoint
cosines.

Memory: the k selected feature rows (float32, k·D·4 bytes) plus one candidate window. A window is
the next `window_factor`·k candidates by score (one pass over the scores, keeping the best that
rank below the previous window); their features are gathered in one streamed pass
over the store shards into an on-disk float16 array in rank order, then walked `chunk` rows at a
time (one [chunk, selected] product, then the few survivors against each other in order). Should
the window run out before k are selected, the next window is gathered the same way.

Outputs under `out` (default `<scores>/diverse_t{threshold}`), per task: `top_p{p}.jsonl` (the
selected records, descending score, as `select` writes them), `skipped.csv` (skipped id, score,
the selected id it is too close to, their cosine), and `diverse_summary.json`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import save_config, path_field
from ..core.influence import TopK
from ..selection.folder import score_blocks
from ..selection.select import (SelectConfig, pool_file, pool_size, selection_count, selection_name,
                                write_selection)

log = logging.getLogger("less_ray")


@dataclass
class DiverseSelectConfig:
    scores: str = path_field("in", "")  # a LESS score folder (less-ray score)
    out: str | None = path_field("out", None)  # default <scores>/diverse_t{threshold}
    pool: str | None = path_field("in", None)  # default: the pool file the score folder records
    tasks: list[str] | None = None  # default: every task in the folder
    top_p: float | None = 0.05
    top_n: int | None = None  # takes precedence over top_p
    threshold: float = 0.9  # skip a candidate whose cosine to a selected one exceeds this (>= 1: off)
    feature_stores: list[str] | None = path_field("in", None)  # default: score.config.yaml's pool_stores
    features: str = "first"  # first | all (concatenated checkpoints)
    window_factor: float = 2.0  # candidates gathered per window, in multiples of k
    chunk: int = 512
    block_rows: int = 65536


def default_stores(scores: str) -> list[str]:
    import yaml
    path = Path(scores) / "score.config.yaml"
    if not path.exists():
        raise ValueError(f"diverse select: {path} not found; give feature_stores (the pool datastores)")
    stores = (yaml.safe_load(path.read_text()) or {}).get("pool_stores") or []
    if not stores:
        raise ValueError(f"diverse select: {path} lists no pool_stores; give feature_stores")
    return [str(s) for s in stores]


def ranked_window(scores_path: Path, size: int, after: tuple[float, str] | None,
                  block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The next `size` ids and scores in (score desc, id asc) order, after rank (score, id) `after`:
    a top-`size` pass over the rows that rank below it (memory: `size` + one block)."""
    top = TopK(size)
    for blk in score_blocks(scores_path, block_rows):
        ids, scores = blk["id"], blk["score"]
        if after is not None:
            below = (scores < after[0]) | ((scores == after[0]) & (ids > after[1]))
            ids, scores = ids[below], scores[below]
        top.push(scores, ids)
    s, ids, _ = top.result()
    return ids, s


def gather_features(stores: list[str], ids: np.ndarray, path: Path, block_rows: int) -> np.memmap:
    """[len(ids), D] float16 on disk, row i = the (concatenated) features of ids[i], unit rows."""
    from ..store import iter_blocks, read_manifest
    dims = [read_manifest(s).projection.dim for s in stores]
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(ids), sum(dims)))
    pos = {rid: i for i, rid in enumerate(ids.tolist())}
    for c, store in enumerate(stores):
        seen = np.zeros(len(ids), bool)
        lo = sum(dims[:c])
        for blk in iter_blocks(store, ("id", "features"), block_rows):
            hit = [(j, pos[r]) for j, r in enumerate(blk["id"]) if r in pos]
            if hit:
                src, dst = map(np.asarray, zip(*hit))
                arr[dst, lo:lo + dims[c]] = blk["features"][src]
                seen[dst] = True
        if not seen.all():
            raise ValueError(f"diverse select: store {store} lacks {int((~seen).sum())} scored ids, "
                             f"e.g. {ids[~seen][:3].tolist()}")
    return arr


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)


class DiverseWalk:
    """Greedy walk in rank order; holds the selected rows only."""

    def __init__(self, k: int, dim: int, threshold: float):
        self.k, self.threshold = k, threshold
        self.feats = np.zeros((k, dim), np.float32)
        self.ids: list[str] = []
        self.scores: list[float] = []
        self.skipped: list[tuple[str, float, str, float]] = []  # id, score, too close to, cosine

    @property
    def done(self) -> bool:
        return len(self.ids) >= self.k

    def push(self, ids: np.ndarray, scores: np.ndarray, feats: np.ndarray) -> None:
        """The next candidates in rank order (their unit features)."""
        check = self.threshold < 1
        n0 = len(self.ids)
        if check and n0:
            prior = feats @ self.feats[:n0].T
            best_prior, arg_prior = prior.max(1), prior.argmax(1)
        within = feats @ feats.T if check else None
        chosen: list[int] = []  # chunk rows selected here, in order
        for i in range(len(ids)):
            if self.done:
                return
            if check:
                close, sim = None, -np.inf
                if n0 and best_prior[i] > self.threshold:
                    close, sim = self.ids[arg_prior[i]], float(best_prior[i])
                elif chosen:
                    w = within[i, chosen]
                    j = int(w.argmax())
                    if w[j] > self.threshold:
                        close, sim = ids[chosen[j]], float(w[j])
                if close is not None:
                    self.skipped.append((str(ids[i]), float(scores[i]), str(close), sim))
                    continue
            self.feats[len(self.ids)] = feats[i]
            self.ids.append(str(ids[i]))
            self.scores.append(float(scores[i]))
            chosen.append(i)


def diverse_select_task(cfg: DiverseSelectConfig, task: str, stores: list[str], out: Path, pool: str) -> dict:
    import pyarrow.parquet as pq
    scores_path = Path(cfg.scores) / task / "scores.parquet"
    n = pq.ParquetFile(scores_path).metadata.num_rows
    k = selection_count(cfg.top_p, cfg.top_n, pool_size(pool), n, getattr(cfg, "count_rule", "floor"))  # select's rule
    task_dir = out / task
    task_dir.mkdir(parents=True, exist_ok=True)
    window = max(1, int(math.ceil(cfg.window_factor * k)))
    walk, start, windows, after = None, 0, 0, None
    while k and start < n and (walk is None or not walk.done):
        ids, scores = ranked_window(scores_path, window, after, cfg.block_rows)
        stop, after = start + len(ids), (float(scores[-1]), str(ids[-1]))
        feats = gather_features(stores, ids, task_dir / ".window.npy", cfg.block_rows)
        if walk is None:
            walk = DiverseWalk(k, feats.shape[1], cfg.threshold)
        for lo in range(0, len(ids), cfg.chunk):
            walk.push(ids[lo:lo + cfg.chunk], scores[lo:lo + cfg.chunk], _unit(feats[lo:lo + cfg.chunk]))
            if walk.done:
                break
        del feats
        (task_dir / ".window.npy").unlink()
        start, windows = stop, windows + 1
    sel_ids = np.asarray(walk.ids if walk else [], dtype=str)
    sel_scores = np.asarray(walk.scores if walk else [], dtype=np.float64)
    sel = task_dir / selection_name(SelectConfig(top_p=cfg.top_p, top_n=cfg.top_n))
    write_selection(pool, sel_ids, sel_scores, sel)
    skipped = walk.skipped if walk else []
    with open(task_dir / "skipped.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "score", "too_close_to", "cosine"])
        w.writerows((i, repr(s), c, f"{x:.6f}") for i, s, c, x in skipped)
    if len(sel_ids) < k:
        log.warning("diverse select %s: only %d of %d candidates pass the threshold", task, len(sel_ids), k)
    return {"k": k, "selected": len(sel_ids), "skipped": len(skipped), "candidates_walked": len(sel_ids) + len(skipped),
            "windows": windows, "file": str(sel), "skipped_file": str(task_dir / "skipped.csv")}


def run_diverse_select(cfg: DiverseSelectConfig) -> dict[str, Any]:
    if not cfg.scores:
        raise ValueError("diverse select: 'scores' (a LESS score folder) is required")
    if cfg.top_n is None and (cfg.top_p is None or not 0 < cfg.top_p <= 1):
        raise ValueError(f"diverse select: top_p must be in (0, 1], got {cfg.top_p}")
    if cfg.features not in ("first", "all"):
        raise ValueError(f"diverse select: features must be first or all, not {cfg.features!r}")
    if cfg.window_factor < 1 or cfg.chunk < 1:
        raise ValueError("diverse select: window_factor must be >= 1 and chunk >= 1")
    stores = cfg.feature_stores or default_stores(cfg.scores)
    stores = stores[:1] if cfg.features == "first" else stores
    out = Path(cfg.out or Path(cfg.scores) / f"diverse_t{cfg.threshold:g}")
    summary_in = json.loads((Path(cfg.scores) / "score_summary.json").read_text())
    tasks = cfg.tasks or list(summary_in["tasks"])
    pool = pool_file(cfg.scores, cfg.pool)
    out.mkdir(parents=True, exist_ok=True)
    result = {"threshold": cfg.threshold, "features": cfg.features, "stores": stores, "tasks": {}}
    for task in tasks:
        result["tasks"][task] = diverse_select_task(cfg, task, stores, out, pool)
        log.info("diverse select %s: %s", task, result["tasks"][task])
    (out / "diverse_summary.json").write_text(json.dumps(result, indent=2))
    save_config(cfg, out / "diverse_select.config.yaml")
    return result
