"""k-center greedy coresets on example embeddings.

- `kcenter` (targeted, after "Maybe only 0.5% data is needed", Chen et al. 2023): K-Means on the
  pool's embeddings (scikit-learn, seeded); each target is assigned to its nearest centroid; the
  `target_clusters` clusters most frequent among a task's targets are its candidates; k-center
  greedy picks `budget` diverse candidates among them.
- `kcenter_all` (task-agnostic, MoDS-style diversity): k-center greedy over the whole pool.

k-center greedy (farthest-point traversal) from a seeded random start: each pick is the point
farthest (Euclidean, on unit embeddings) from everything picked so far. Its order is written as
a score, so `select`'s top-k (score desc) is the greedy's first k picks for any k <= budget:
- a pick scores its distance to the picked set at pick time (non-increasing along the greedy;
  the first pick, at distance infinity, gets the next float above the second's);
- every other candidate scores its final distance to the picked set, which is never above the
  last pick's (the farthest-point property), kept strictly below it;
- (kcenter) a pool example outside the chosen clusters scores -(1 + its distance to the nearest
  chosen centroid): below every candidate, nearest first, should the budget exceed them.
`budget` defaults to select's k (selection.select.selection_count of top_p and the pool's N).

Memory: the pool's N x d embedding matrix in one process (float32: 1.5 GB per million examples at
d = 384), plus K-Means' N labels; the greedy costs budget x candidates x d.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..selection.folder import ScoreFolderWriter
from ..store import read_store
from .base import ALL_TASK, register
from .embeddings import EmbedConfig, check_same_encoder, embed_pool_and_targets


@dataclass
class KCenterAllConfig(EmbedConfig):
    budget: int | None = None  # greedy picks (default select's k of top_p, what select keeps)
    write_rows: int = 65536


@dataclass
class KCenterConfig(KCenterAllConfig):
    n_clusters: int = 10
    target_clusters: int = 1  # how many of the clusters most frequent among the targets
    kmeans_n_init: int = 3
    minibatch: bool = False  # MiniBatchKMeans (large pools)


def k_center_greedy(x: np.ndarray, budget: int, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Farthest-point traversal of the rows of `x` from row `start`.
    Returns (picked row indices in order [b], each pick's distance to the earlier picks [b] (inf
    for the first), every row's final distance to the picked set [n])."""
    import torch
    n = len(x)
    budget = min(budget, n)
    xt = torch.as_tensor(np.ascontiguousarray(x))
    sq = (xt * xt).sum(1)
    min_d2 = torch.full((n,), math.inf, dtype=xt.dtype)
    picks, dists = np.empty(budget, np.int64), np.empty(budget, np.float64)
    nxt = start
    for r in range(budget):
        picks[r], dists[r] = nxt, math.sqrt(max(float(min_d2[nxt]), 0.0))
        d2 = (sq - 2 * (xt @ xt[nxt]) + sq[nxt]).clamp_(min=0)
        torch.minimum(min_d2, d2, out=min_d2)
        # below every unpicked row (>= 0): once duplicates of the picks are all that is left, the
        # argmax takes one of them, never a pick again; its final distance is clamped to 0 below
        min_d2[nxt] = -1
        nxt = int(torch.argmax(min_d2))
    final = min_d2.clamp(min=0).sqrt().double().numpy() if budget else np.full(n, math.inf)
    return picks, dists, final


def order_scores(n: int, picks: np.ndarray, pick_dist: np.ndarray, final_dist: np.ndarray) -> np.ndarray:
    """float32 scores whose descending order is the greedy's (see the module docstring)."""
    scores = final_dist.astype(np.float32)
    if len(picks) == 0:
        return scores
    p = pick_dist.astype(np.float32)
    p[0] = np.nextafter(p[1], np.float32(np.inf)) if len(p) > 1 else np.float32(1.0)
    rest = np.ones(n, bool)
    rest[picks] = False
    scores[rest] = np.minimum(scores[rest], np.nextafter(p[-1], np.float32(-np.inf)))
    scores[picks] = p
    return scores


def greedy_scores(x: np.ndarray, budget: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    start = int(np.random.default_rng(seed).integers(len(x)))
    picks, dist, final = k_center_greedy(x, budget, start)
    return order_scores(len(x), picks, dist, final), {
        "budget": len(picks), "candidates": len(x), "start": start,
        "last_pick_distance": float(dist[-1]) if len(picks) > 1 else None}


def fit_kmeans(x: np.ndarray, cfg: KCenterConfig):
    from sklearn.cluster import KMeans, MiniBatchKMeans
    if cfg.n_clusters > len(x):
        raise ValueError(f"kcenter: n_clusters {cfg.n_clusters} > {len(x)} pool examples")
    cls = MiniBatchKMeans if cfg.minibatch else KMeans
    return cls(n_clusters=cfg.n_clusters, n_init=cfg.kmeans_n_init, random_state=cfg.seed).fit(x)


def target_cluster_choice(target_labels: np.ndarray, n_clusters: int, k: int) -> tuple[list[int], list[int]]:
    """The k clusters most frequent among the targets (ties: smaller index), and every count."""
    counts = np.bincount(target_labels, minlength=n_clusters)
    order = sorted(range(n_clusters), key=lambda c: (-counts[c], c))
    return [c for c in order[:k] if counts[c] > 0], counts.tolist()


def budget_for(cfg: KCenterAllConfig, n: int) -> int:
    if cfg.budget is not None:
        return cfg.budget
    if cfg.top_p is None:
        raise ValueError("k-center: give 'budget' or 'top_p'")
    from ..selection.select import selection_count
    return selection_count(cfg.top_p, None, n, rule=getattr(cfg, "count_rule", "floor"))  # select's k


def write_scores(cfg: KCenterAllConfig, pool: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                 best: dict[str, list[str] | None], summary: dict[str, Any]) -> dict[str, Any]:
    writer = ScoreFolderWriter(cfg.out, list(scores), pool=cfg.pool)
    ids, sources = pool["id"].tolist(), pool["source"].tolist()
    for lo in range(0, len(ids), cfg.write_rows):
        sl = slice(lo, lo + cfg.write_rows)
        for task, s in scores.items():
            writer.write(task, ids[sl], sources[sl], s[sl], best[task][sl] if best[task] is not None else None)
    return writer.close(summary)


@register("kcenter_all", KCenterAllConfig, "k-center greedy over the whole pool (task-agnostic diversity)")
def run_kcenter_all(cfg: KCenterAllConfig) -> dict[str, Any]:
    pool_store, _ = embed_pool_and_targets(without_targets(cfg))
    pool = read_store(pool_store, ("id", "source", "features"))
    scores, info = greedy_scores(pool["features"], budget_for(cfg, len(pool["id"])), cfg.seed)
    return write_scores(cfg, pool, {ALL_TASK: scores}, {ALL_TASK: None},
                  {"selector": "kcenter_all", "encoder": cfg.encoder, "tasks": {ALL_TASK: info}})


def without_targets(cfg: KCenterAllConfig) -> KCenterAllConfig:
    import dataclasses
    return dataclasses.replace(cfg, targets={})


def targeted_scores(x: np.ndarray, targets: dict[str, np.ndarray], cfg: KCenterConfig) -> tuple[
        dict[str, np.ndarray], dict[str, list[str]], dict[str, Any]]:
    """Per task: scores over the pool rows `x` (K-Means, the targets' clusters, greedy in them)."""
    km = fit_kmeans(x, cfg)
    labels = km.labels_
    budget = budget_for(cfg, len(x))
    scores, best, info = {}, {}, {"cluster_sizes": np.bincount(labels, minlength=cfg.n_clusters).tolist()}
    for task, t in targets.items():
        chosen, counts = target_cluster_choice(km.predict(t), cfg.n_clusters, cfg.target_clusters)
        inside = np.isin(labels, chosen)
        s = np.empty(len(x), np.float32)
        s[inside], info[task] = greedy_scores(x[inside], budget, cfg.seed)
        if (~inside).any():  # below every candidate: -(1 + distance to the nearest chosen centroid)
            xr, c = x[~inside], km.cluster_centers_[chosen].astype(x.dtype)
            d2 = (xr * xr).sum(1)[:, None] - 2 * xr @ c.T + (c * c).sum(1)[None]
            s[~inside] = -(1.0 + np.sqrt(np.maximum(d2, 0).min(1)))
        scores[task] = s
        best[task] = [f"cluster{c}" for c in labels.tolist()]
        info[task].update({"chosen_clusters": chosen, "target_cluster_counts": counts})
    return scores, best, info


@register("kcenter", KCenterConfig, "K-Means, the targets' most frequent cluster(s), k-center greedy in them",
          targeted=True)
def run_kcenter(cfg: KCenterConfig) -> dict[str, Any]:
    pool_store, target_stores = embed_pool_and_targets(cfg)
    check_same_encoder(pool_store, list(target_stores.values()))
    pool = read_store(pool_store, ("id", "source", "features"))
    targets = {t: read_store(s, ("features",))["features"] for t, s in target_stores.items()}
    scores, best, info = targeted_scores(pool["features"], targets, cfg)
    sizes = info.pop("cluster_sizes")
    return write_scores(cfg, pool, scores, best, {"selector": "kcenter", "encoder": cfg.encoder,
                                            "n_clusters": cfg.n_clusters, "cluster_sizes": sizes, "tasks": info})
