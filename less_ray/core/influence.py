"""LESS's influence score, block by block, and an exact streaming top-k.

For target task T with target features V_c [M, d] and pool features G_c [N, d] per checkpoint c:
    S = Σ_c w_c · G_c V_cᵀ                      (N × M)
    score(x) = max over subtasks s of mean_{m ∈ s} S[x, m]
Because the mean over a subtask's targets is linear, Σ_c w_c G_c V_cᵀ A = Σ_c G_c (w_c V_cᵀ A),
where A [M, S] averages each subtask's columns: the pool only ever meets one [S, d] matrix per
checkpoint (the weighted subtask-mean target features), whatever the number of targets. Several
tasks are scored in one pass by stacking their subtask rows.

Ties in the top-k are broken by id (ascending), so the selected set is a function of the
scores alone, not of block order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"checkpoint weights must be finite, non-negative and not all zero, got {list(weights)}")
    return w / w.sum()


def subtask_groups(subtasks: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """Subtask names in first-appearance order and each target's group index
    (a task without subtasks is one subtask, named '')."""
    names: list[str] = []
    index = {}
    groups = np.empty(len(subtasks), dtype=np.int64)
    for i, s in enumerate(subtasks):
        key = s or ""
        if key not in index:
            index[key] = len(names)
            names.append(key)
        groups[i] = index[key]
    return names, groups


def subtask_mean_matrix(features: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """[S, d]: the mean target feature of each subtask."""
    features = np.asarray(features, dtype=np.float64)
    sums = np.zeros((n_groups, features.shape[1]))
    np.add.at(sums, groups, features)
    counts = np.bincount(groups, minlength=n_groups).astype(np.float64)
    return sums / counts[:, None]


@dataclass
class TaskQuery:
    """One target task, reduced to what the pool needs: per checkpoint, w_c · (subtask means)."""
    task: str
    subtasks: list[str]
    weighted_means: list[np.ndarray]  # per checkpoint, [S, d] float32

    @classmethod
    def build(cls, task: str, target_features: Sequence[np.ndarray], subtasks: Sequence[str | None],
              weights: Sequence[float]) -> "TaskQuery":
        w = normalize_weights(weights)
        if len(subtasks) == 0 or any(len(v) == 0 for v in target_features):
            raise ValueError(f"task {task}: no target features (every target example was skipped?): "
                             "a task needs at least one target")
        if len(target_features) != len(w):
            raise ValueError(f"{task}: {len(target_features)} checkpoints of target features, {len(w)} weights")
        names, groups = subtask_groups(subtasks)
        means = [(wc * subtask_mean_matrix(v, groups, len(names))).astype(np.float32)
                 for wc, v in zip(w, target_features)]
        return cls(task, names, means)


def stack_queries(queries: Sequence[TaskQuery]) -> tuple[list[np.ndarray], list[slice]]:
    """Several tasks in one matmul: per checkpoint [ΣS, d], and each task's column slice."""
    if not queries:
        raise ValueError("no target tasks to score")
    n_ckpt = len(queries[0].weighted_means)
    if any(len(q.weighted_means) != n_ckpt for q in queries):
        raise ValueError("every task must have features for the same checkpoints")
    stacked = [np.concatenate([q.weighted_means[c] for q in queries]) for c in range(n_ckpt)]
    slices, start = [], 0
    for q in queries:
        slices.append(slice(start, start + len(q.subtasks)))
        start += len(q.subtasks)
    return stacked, slices


def partial_subtask_scores(pool_features: np.ndarray, stacked_means: np.ndarray) -> np.ndarray:
    """One checkpoint's contribution for a block of pool rows: [n, ΣS] (float32 GEMM)."""
    return np.asarray(pool_features, dtype=np.float32) @ stacked_means.T


def reduce_max(subtask_scores: np.ndarray, task_slice: slice) -> tuple[np.ndarray, np.ndarray]:
    """(score, best subtask index) per row: max over the task's subtask means."""
    block = subtask_scores[:, task_slice]
    best = block.argmax(axis=1)
    return block[np.arange(len(block)), best], best


class TopK:
    """Exact streaming top-k: keep the k best (score desc, id asc) over blocks seen so far.
    Per block only candidates at or above the block's k-th score survive (ties included), so
    memory is O(k + block) and the result does not depend on block order."""

    def __init__(self, k: int):
        if k < 0:
            raise ValueError("k must be >= 0")
        self.k = k
        self.scores = np.empty(0, dtype=np.float64)
        self.ids = np.empty(0, dtype=str)
        self.extra: dict[str, np.ndarray] = {}

    def push(self, scores: np.ndarray, ids: np.ndarray, **extra: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError(f"non-finite scores for ids {list(np.asarray(ids)[~np.isfinite(scores)][:5])}")
        if self.k == 0 or len(scores) == 0:
            return
        if len(scores) > self.k:  # pre-filter the block, keeping every tie at the cut
            kth = np.partition(scores, len(scores) - self.k)[len(scores) - self.k]
            keep = scores >= kth
            scores, ids = scores[keep], np.asarray(ids)[keep]
            extra = {k: np.asarray(v)[keep] for k, v in extra.items()}
        all_scores = np.concatenate([self.scores, scores])
        all_ids = np.concatenate([self.ids, np.asarray(ids, dtype=str)])
        order = np.lexsort((all_ids, -all_scores))[: self.k]  # score desc, then id asc
        self.scores, self.ids = all_scores[order], all_ids[order]
        for name, values in extra.items():
            prev = self.extra.get(name, np.empty(0, dtype=np.asarray(values).dtype))
            self.extra[name] = np.concatenate([prev, np.asarray(values)])[order]

    def merge(self, other: "TopK") -> None:
        self.push(other.scores, other.ids, **other.extra)

    def result(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        return self.scores, self.ids, self.extra
