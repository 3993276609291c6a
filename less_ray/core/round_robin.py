"""Round-robin selection as a score: the order in which taking turns picks the pool (pure numpy).

Round-robin over lists (RDS+'s `get_top_influences.py --selection_method max`, one list per target
example; or one list per task): each list is sorted best first (stable: equal scores keep pool
order); in round r the lists take turns, list t in order, each adding its r-th best unless it is
picked already; picking stops at the budget. An example therefore enters at its first (round,
list) pair: round = its best rank over the lists, list = the first list that ranks it there. So
sorting by key = best_rank * n_lists + that list reproduces the picking order exactly, for every
budget at once, and -key is a score whose top k are the round-robin's k picks. Each (round, list)
pair names one example, so no two keys tie.

A float32 score holds the key exactly below 2**24 (16.7M); `exact_positions` says how far that
reaches. Beyond it neighbouring keys may round together (the order is then kept up to ties,
broken by id as every selection breaks them).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

FLOAT32_EXACT = 2 ** 24


class RoundRobin:
    """Feed each list's scores over the whole pool (`add`, lists in turn order); `keys()` then
    gives every pool row's key and the list that picks it."""

    def __init__(self, n: int):
        self.n, self.lists = n, 0
        self.best_rank = np.full(n, np.iinfo(np.int64).max, np.int64)
        self.best_list = np.full(n, -1, np.int64)

    def add(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores)
        if scores.shape != (self.n,):
            raise ValueError(f"round robin: a list's scores must cover the pool ({self.n}), got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("round robin: non-finite score in a list")
        order = np.argsort(-scores.astype(np.float64), kind="stable")  # best first, ties in pool order
        rank = np.empty(self.n, np.int64)
        rank[order] = np.arange(self.n)
        better = rank < self.best_rank  # strict: an earlier list keeps a tied round
        self.best_rank[better] = rank[better]
        self.best_list[better] = self.lists
        self.lists += 1

    def keys(self) -> tuple[np.ndarray, np.ndarray]:
        if self.lists == 0:
            raise ValueError("round robin: no list added")
        return self.best_rank * self.lists + self.best_list, self.best_list.copy()


def round_robin_keys(lists: Iterable[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(key [n] int64, picking list [n]) for lists given as score arrays over the pool."""
    rr = RoundRobin(n)
    for scores in lists:
        rr.add(scores)
    return rr.keys()


def key_scores(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """(score = -key as float64, the number of leading positions a float32 score keeps exact)."""
    keys = np.asarray(keys, np.int64)
    exact = int((np.sort(keys) < FLOAT32_EXACT).sum())
    return -keys.astype(np.float64), exact
