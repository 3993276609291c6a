"""Evaluation on a demo task family: fresh examples (disjoint from the pool and the targets)."""
from __future__ import annotations

from ..data.demo import generate_pool, generate_targets
from .metrics import normalize_answer
from .prompts import EvalItem


def demo_items(family: str, n: int, seed: int = 0, n_pool: int = 2000) -> list[EvalItem]:
    avoid = generate_pool(n_pool, seed=seed) + generate_targets(family, 12, seed=seed + 1)
    recs = generate_targets(family, n, seed=seed + 1000, avoid=avoid)
    return [EvalItem(f"demo_{family}", r.subtask, r.id, r.messages[0]["content"], "", [r.messages[1]["content"]])
            for r in recs]


def demo_correct(prediction: str, item: EvalItem) -> float:
    return float(normalize_answer(prediction) == normalize_answer(item.gold[0]))
