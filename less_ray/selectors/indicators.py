"""Instruction Mining's pure parts (numpy / torch, no Ray, no model): MTLD, KNN-k distances, the
standardisation of the indicators, the least-squares rule and the scores it gives.

- `mtld`: McCarthy & Jarvis (2010), "MTLD, vocd-D, and HD-D", bidirectional. Words are the text's
  lowercased `[\\w']+` runs (punctuation dropped). A pass walks the words keeping the running
  type-token ratio (TTR) of the current factor; when it falls to `threshold` (0.72) or below a
  factor is complete and the count restarts; the words left at the end add the partial factor
  (1 - TTR) / (1 - threshold). A pass's value is words / factors; MTLD is the mean of the forward
  and the backward pass. Degenerate texts, finite by convention (McCarthy & Jarvis ask for 100+
  words; responses are often shorter): no words -> 0; a pass with no factor at all (every word
  distinct) -> the word count, as if the text were one factor.
- `knn_mean_distance`: per row, the mean Euclidean distance to its k nearest other rows (the row
  itself excluded by position, so a duplicate counts at distance 0), chunked: chunk x N distances.
- `draw_subsets`: the fit's seeded subsets of the pool, and the held-out evaluation sample.
- `fit_rule`: log(eval loss) ~ intercept + sum_i w_i * mean indicator_i over a subset, by
  `numpy.linalg.lstsq`; refuses fewer subsets than indicators + 2 (no residual degree of freedom).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _mtld_pass(tokens: Sequence[str], threshold: float) -> float:
    factors, types, count = 0.0, set(), 0
    for t in tokens:
        types.add(t)
        count += 1
        if len(types) / count <= threshold:  # the factor is complete: restart the count
            factors, types, count = factors + 1, set(), 0
    if count:  # the words left over: a partial factor
        factors += (1 - len(types) / count) / (1 - threshold)
    return len(tokens) / factors if factors > 0 else float(len(tokens))


def mtld(text: str | Sequence[str], threshold: float = 0.72) -> float:
    """Bidirectional MTLD of a text (or of a list of words) — see the module docstring."""
    tokens = words(text) if isinstance(text, str) else list(text)
    if not tokens:
        return 0.0
    return (_mtld_pass(tokens, threshold) + _mtld_pass(tokens[::-1], threshold)) / 2


def knn_mean_distance(x: np.ndarray, k: int = 6, chunk: int = 1024) -> np.ndarray:
    """Mean Euclidean distance of each row of `x` [n, d] to its k nearest other rows (float64 [n]);
    k is capped at n - 1 (a lone row: 0). Memory: chunk x n distances at a time."""
    import torch
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    n = len(xt)
    k = min(k, n - 1)
    out = np.zeros(n, np.float64)
    if k <= 0:
        return out
    sq = (xt * xt).sum(1)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        d2 = (sq[lo:hi, None] + sq[None, :] - 2 * (xt[lo:hi] @ xt.T)).clamp_(min=0)
        d2[torch.arange(hi - lo), torch.arange(lo, hi)] = float("inf")  # not its own neighbour
        near = torch.topk(d2, k, dim=1, largest=False).values
        out[lo:hi] = near.double().sqrt().mean(1).numpy()
    return out


def standardize(x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z [n, k], mean [k], std [k]) with mean and std over `rows` (default all); a constant column
    (std 0) becomes 0 everywhere (its weight then fits to 0)."""
    ref = x if rows is None else x[rows]
    mean, std = ref.mean(0), ref.std(0)
    safe = np.where(std > 0, std, 1.0)
    return np.where(std > 0, (x - mean) / safe, 0.0), mean, std


def fit_rule(features: np.ndarray, losses: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Least squares of log(losses) [S] on [1, features] ([S, k], a subset's mean indicators):
    {"intercept", "weights": {name: w}, "r2", "rank", "residuals"}."""
    features, losses = np.asarray(features, np.float64), np.asarray(losses, np.float64)
    s, k = features.shape
    if k != len(names) or len(losses) != s:
        raise ValueError(f"fit_rule: {s} x {k} features, {len(losses)} losses, {len(names)} names")
    if s <= k + 1:
        raise ValueError(f"instruction_mining: {s} fine-tuned subsets cannot fit {k} indicators and an intercept "
                         f"with a residual left: fit_subsets must exceed {k + 1} (or give coefficients)")
    if not (losses > 0).all() or not np.isfinite(losses).all():
        raise ValueError(f"fit_rule: eval losses must be positive and finite, got {losses.tolist()}")
    y = np.log(losses)
    design = np.hstack([np.ones((s, 1)), features])
    beta, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    tot = float(((y - y.mean()) ** 2).sum())
    return {"intercept": float(beta[0]), "weights": {n: float(w) for n, w in zip(names, beta[1:])},
            "r2": 1 - float((resid ** 2).sum()) / tot if tot > 0 else None, "rank": int(rank),
            "residuals": resid.tolist()}


def draw_subsets(scored: np.ndarray, n_subsets: int, size: int, eval_size: int | None,
                 seed: int) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Seeded, over the rows where `scored`: (`n_subsets` sorted subsets of `size` rows, each drawn
    without replacement, and, when `eval_size` is given, the sorted held-out rows no subset holds;
    None otherwise)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.flatnonzero(scored))
    held = None if eval_size is None else np.sort(perm[:eval_size])
    rest = perm if eval_size is None else perm[eval_size:]
    if len(rest) < size or (held is not None and len(held) == 0):
        raise ValueError(f"instruction_mining: {len(perm)} scored pool examples cannot give subsets of {size}"
                         + ("" if eval_size is None else f" beside {eval_size} held out for evaluation"))
    return [np.sort(rng.choice(rest, size, replace=False)) for _ in range(n_subsets)], held


def rule_scores(z: np.ndarray, names: Sequence[str], weights: dict[str, float]) -> np.ndarray:
    """score = -(w . z): lower predicted log eval loss = higher score (float64 [n])."""
    w = np.array([float(weights.get(n, 0.0)) for n in names])
    return -(np.asarray(z, np.float64) @ w)
