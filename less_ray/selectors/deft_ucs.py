"""`deft_ucs`: DEFT-UCS (Das & Khetan 2023, "DEFT: Data Efficient Fine-Tuning for Large Language
Models via Unsupervised Core-Set Selection", arXiv 2310.16776), task-agnostic.

The paper's recipe (its Figure 1 and Algorithm 1, as its summaries and reimplementations give it;
the algorithm's own text was not reachable here): a random seed set D_base is kept; the rest,
D_remain, is embedded (Sentence-T5 there; here EmbedConfig's encoder, RDS's minilm by default)
and clustered with K-Means into K clusters; from each cluster A examples are sampled by their
distance to the centroid, a share alpha of "easy" ones (closest) and beta of "hard" ones
(farthest); the core-set D_c plus D_base is the training set. Here, with select's k as the budget
(`budget`, default `selection_count(top_p, N)`, as kcenter's `budget_for`):
1. D_base: the round(base_share * k) pool examples with the smallest `seeded_uniform(id, seed)`
   (a uniform random subset that depends on ids and seed only, as the `random` selector's);
2. K-Means (scikit-learn, `random_state=seed`) on the embeddings of D_remain; K is capped at
   |D_remain|;
3. A = (k - |D_base|) / K per cluster, as integers by water-filling (`cluster_quotas`): every
   cluster with room gets an equal share, a cluster smaller than its share gives all it has and
   its remainder is shared again among the others; what is left below one per open cluster goes
   one each to the clusters with the most unpicked examples (ties: smaller cluster index);
4. in a cluster with quota q: n_easy = floor(alpha*q + 1/2) closest to the centroid and the
   n_hard = q - n_easy farthest (cosine distance; on a tie the smaller pool row counts as closer).
Pick order (written as a score, so `select`'s top-k is the selection): D_base in seeded order,
then the core-set by rank within its cluster, cluster index breaking ties; a cluster's own
sequence is its hard picks (farthest first) then its easy picks (closest first). Pick i of P
scores P - i (>= 1, exact in float32); every other example scores 0.

Defaults and where from:
- n_clusters = 7: the paper's K for CoEDIT (elbow method), as both reimplementations checked use it
  (DELIFT's DEFT-UCS baseline `n_clusters=7`; DEFT-UCS-Opt's config "K = 7 (from paper)");
- alpha = 0, beta = 1 (hard sampling): the paper's headline model (32.5% of CoEDIT) samples hard,
  and it reports hard sampling best when D_base is small (the reimplementations use 0.5 / 0.5);
- base_share = 10 / 32.5: that model's D_base (10% of CoEDIT, from the paper as we read it; not in
  the excerpts checked) as a share of its 32.5% total: the paper's proportion at any top_p;
- cosine distance to the centroid (DEFT-UCS-Opt's baseline recomputes cosine distances).
Not the paper's: kmeans_n_init (unstated there; kcenter's 3). base_share=0 gives pure UCS.

Memory: the pool's N x d embeddings in one process (as kcenter), K-Means' labels, N distances.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..selection.folder import ScoreFolderWriter
from ..selection.seeded import seeded_uniform
from ..store import read_store
from .base import ALL_TASK, register
from .embeddings import EmbedConfig, embed_pool_and_targets
from .kcenter import budget_for

log = logging.getLogger("less_ray")


@dataclass
class DeftUcsConfig(EmbedConfig):
    n_clusters: int = 7  # K: the paper's for CoEDIT (elbow method)
    alpha: float = 0.0  # easy share of a cluster's quota (closest to the centroid); paper's best: hard only
    beta: float = 1.0  # hard share (farthest from the centroid); alpha + beta = 1
    base_share: float = 10 / 32.5  # random D_base's share of the budget (paper: 10% of CoEDIT in 32.5%)
    budget: int | None = None  # picks in all (default select's k of top_p: what select keeps)
    kmeans_n_init: int = 3  # K-Means restarts (not stated in the paper; kcenter's)
    write_rows: int = 65536  # score rows per write


def cluster_quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """Water-filling: `total` picks over clusters of `sizes` (see the module docstring, step 3)."""
    sizes = np.asarray(sizes, np.int64)
    quotas = np.zeros_like(sizes)
    left = min(int(total), int(sizes.sum()))
    while left > 0:
        spare = sizes - quotas
        open_ = np.flatnonzero(spare > 0)
        share = left // len(open_)
        if share == 0:  # fewer picks than open clusters: one each to those with the most room
            for c in sorted(open_.tolist(), key=lambda c: (-spare[c], c))[:left]:
                quotas[c] += 1
            break
        add = np.minimum(spare[open_], share)  # a small cluster gives all it has; the rest goes round again
        quotas[open_] += add
        left -= int(add.sum())
    return quotas


def easy_hard_picks(dist: np.ndarray, quota: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions in `dist` (one cluster's distances to its centroid): the n_easy closest (closest
    first) and the quota - n_easy farthest (farthest first). One total order, distance then
    position (the smaller position counts as closer), read from both ends: disjoint even on ties."""
    n_easy = int(math.floor(alpha * quota + 0.5))
    closest_first = np.lexsort((np.arange(len(dist)), dist))
    return closest_first[:n_easy], closest_first[::-1][:quota - n_easy]


def cosine_to_centroid(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1 - cos(row, its cluster's centroid), in float64."""
    x = np.asarray(x, np.float64)
    c = np.asarray(centroids, np.float64)[labels]
    cos = (x * c).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(c, axis=1))
    return 1.0 - cos


def deft_ucs_order(x: np.ndarray, ids: list[str], budget: int, cfg: DeftUcsConfig) -> tuple[
        np.ndarray, np.ndarray, dict[str, Any]]:
    """(pool rows in pick order, each row's cluster (-1: D_base), summary) for embeddings `x`."""
    if not (cfg.alpha >= 0 and cfg.beta >= 0 and abs(cfg.alpha + cfg.beta - 1) < 1e-9):
        raise ValueError(f"deft_ucs: alpha and beta must be >= 0 and sum to 1, got {cfg.alpha}, {cfg.beta}")
    if not 0 <= cfg.base_share <= 1 or cfg.n_clusters < 1:
        raise ValueError(f"deft_ucs: base_share must be in [0, 1] and n_clusters >= 1, got "
                         f"{cfg.base_share}, {cfg.n_clusters}")
    n = len(x)
    budget = min(int(budget), n)
    n_base = int(math.floor(cfg.base_share * budget + 0.5))
    seeded = np.argsort(seeded_uniform(ids, cfg.seed), kind="stable")
    base, remain = seeded[:n_base], np.sort(seeded[n_base:])
    labels = np.full(n, -1, np.int64)
    k = min(cfg.n_clusters, len(remain))
    info: dict[str, Any] = {"budget": budget, "base": n_base, "n_clusters": k, "alpha": cfg.alpha,
                            "beta": cfg.beta, "cluster_sizes": [], "cluster_quotas": [], "easy_picks": [],
                            "hard_picks": []}
    if k == 0:
        return base, labels, info
    from sklearn.cluster import KMeans
    km = KMeans(n_clusters=k, n_init=cfg.kmeans_n_init, random_state=cfg.seed).fit(x[remain])
    labels[remain] = km.labels_
    dist = cosine_to_centroid(x[remain], km.cluster_centers_, km.labels_)
    sizes = np.bincount(km.labels_, minlength=k)
    quotas = cluster_quotas(sizes, budget - n_base)
    ranked = []  # (rank within its cluster, cluster, pool row)
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)  # increasing pool row: ties go to the smaller row
        easy, hard = easy_hard_picks(dist[members], int(quotas[c]), cfg.alpha)
        seq = remain[members[np.concatenate([hard, easy])]]
        ranked += [(r, c, int(row)) for r, row in enumerate(seq)]
        info["easy_picks"].append(len(easy))
        info["hard_picks"].append(len(hard))
    core = np.array([row for _, _, row in sorted(ranked)], np.int64)
    info.update(cluster_sizes=sizes.tolist(), cluster_quotas=quotas.tolist(), per_cluster_A=(budget - n_base) / k)
    return np.concatenate([base, core]), labels, info


def pick_order_scores(n: int, order: np.ndarray) -> np.ndarray:
    """float32: pick i of P scores P - i, the rest 0 (select's top-k = the first k picks)."""
    if len(order) >= 1 << 24:
        raise ValueError(f"deft_ucs: {len(order)} picks exceed float32's exact integers")
    scores = np.zeros(n, np.float32)
    scores[order] = np.arange(len(order), 0, -1, dtype=np.float32)
    return scores


@register("deft_ucs", DeftUcsConfig, "DEFT-UCS: random base + K-Means easy/hard picks by centroid distance "
          "(task-agnostic)")
def run_deft_ucs(cfg: DeftUcsConfig) -> dict[str, Any]:
    # task-agnostic: --targets are accepted and ignored (not embedded), as kcenter_all does
    pool_store, _ = embed_pool_and_targets(dataclasses.replace(cfg, targets={}))
    pool = read_store(pool_store, ("id", "source", "features"))
    ids, sources = pool["id"].tolist(), pool["source"].tolist()
    order, labels, info = deft_ucs_order(pool["features"], ids, budget_for(cfg, len(ids)), cfg)
    scores = pick_order_scores(len(ids), order)
    best = ["base" if c < 0 else f"cluster{c}" for c in labels.tolist()]
    log.info("deft_ucs: %d picks (%d base), cluster sizes %s, quotas %s", len(order), info["base"],
             info["cluster_sizes"], info["cluster_quotas"])
    writer = ScoreFolderWriter(cfg.out, [ALL_TASK], pool=cfg.pool)
    for lo in range(0, len(ids), cfg.write_rows):
        sl = slice(lo, lo + cfg.write_rows)
        writer.write(ALL_TASK, ids[sl], sources[sl], scores[sl], best[sl])
    return writer.close({"selector": "deft_ucs", "encoder": cfg.encoder, "base_share": cfg.base_share,
                         "seed": cfg.seed, **info, "tasks": {ALL_TASK: {"budget": len(order)}}})
