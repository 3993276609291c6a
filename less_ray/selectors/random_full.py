"""`random` (seeded) and `full` (the whole pool, for reference training): task-agnostic baselines.

random: score = `selection.seeded.seeded_uniform` of (seed, id), a uniform [0, 1) number that
depends on the example's id and the seed only, not on pool order, sharding or the number of
actors, so the top p% is a uniform random subset that is the same on every run with that seed,
and a smaller p selects a subset of a larger one (the report draws its baseline the same way).
full: every example scores 0 and `top_p` defaults to 1 (all of it; ties by id).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..selection.seeded import RANDOM_SELECTOR, seeded_uniform
from .base import ALL_TASK, PoolScorer, SelectorConfig, register, score_pool


class RandomScorer(PoolScorer):
    def __init__(self, tasks: list[str], seed: int):
        super().__init__(tasks)
        self.seed = seed

    def score(self, rows):
        u = seeded_uniform([r["id"] for r in rows], self.seed)
        return {t: (u, None) for t in self.tasks}


class ConstantScorer(PoolScorer):
    def score(self, rows):
        return {t: (np.zeros(len(rows)), None) for t in self.tasks}


@dataclass
class RandomConfig(SelectorConfig):
    pass


@dataclass
class FullConfig(SelectorConfig):
    top_p: float | None = 1.0


@register(RANDOM_SELECTOR, RandomConfig, "a seeded uniform random p% of the pool")
def run_random(cfg: RandomConfig) -> dict[str, Any]:
    return score_pool(cfg, RANDOM_SELECTOR, [ALL_TASK], RandomScorer, {"seed": cfg.seed}, {"seed": cfg.seed})


@register("full", FullConfig, "the whole pool (reference training)")
def run_full(cfg: FullConfig) -> dict[str, Any]:
    return score_pool(cfg, "full", [ALL_TASK], ConstantScorer)
