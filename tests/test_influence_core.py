"""Influence scores and top-k against a dense numpy computation of LESS's formula."""
import numpy as np
import pytest

from less_ray.core.influence import (TaskQuery, TopK, normalize_weights, partial_subtask_scores, reduce_max,
                                     stack_queries)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_scores(pool, targets, subtasks, lrs):
    """LESS as written: S = Σ_c w_c G_c V_cᵀ (w = lrs / Σ lrs), mean per subtask, max over subtasks."""
    w = np.asarray(lrs, float) / np.sum(lrs)
    s = sum(wc * g @ v.T for wc, g, v in zip(w, pool, targets))
    names = list(dict.fromkeys(subtasks))
    cols = np.stack([s[:, [i for i, t in enumerate(subtasks) if t == n]].mean(axis=1) for n in names], axis=1)
    return cols, names


def test_blockwise_scores_match_dense_for_several_tasks_and_checkpoints():
    rng = np.random.default_rng(0)
    n, d, lrs = 500, 32, [2e-5, 1.5e-5, 1e-5, 5e-6]
    pool = [_unit(rng, n, d) for _ in lrs]
    tasks = {"a": ["s1"] * 3 + ["s2"] * 7 + ["s3"] * 1,  # unequal subtasks
             "b": [None] * 4}  # a task without subtasks is one subtask
    targets = {t: [_unit(rng, len(st), d) for _ in lrs] for t, st in tasks.items()}
    queries = [TaskQuery.build(t, targets[t], st, lrs) for t, st in tasks.items()]
    stacked, slices = stack_queries(queries)
    for q, sl in zip(queries, slices):
        got_s, got_b = [], []
        for lo in range(0, n, 64):  # blocks
            part = sum(partial_subtask_scores(g[lo:lo + 64], m) for g, m in zip(pool, stacked))
            s, b = reduce_max(part, sl)
            got_s.append(s)
            got_b.append(b)
        cols, names = dense_scores(pool, targets[q.task], tasks[q.task], lrs)
        np.testing.assert_allclose(np.concatenate(got_s), cols.max(axis=1), rtol=1e-5, atol=1e-6)
        # the reported best subtask attains the max (argmax may differ only on exact near-ties)
        best = cols[np.arange(n), np.concatenate(got_b)]
        np.testing.assert_allclose(best, cols.max(axis=1), rtol=1e-5, atol=1e-6)
        assert q.subtasks == [x or "" for x in names]


def test_weights_normalised_and_checked():
    np.testing.assert_allclose(normalize_weights([1, 3]), [0.25, 0.75])
    for bad in ([], [0, 0], [1, -1], [np.nan, 1]):
        with pytest.raises(ValueError):
            normalize_weights(bad)


@pytest.mark.parametrize("block", [1, 7, 100, 1000])
def test_streaming_topk_is_exact_with_ties_broken_by_id(block):
    rng = np.random.default_rng(1)
    n, k = 1000, 50
    scores = rng.integers(0, 40, n).astype(float)  # many ties
    ids = np.array([f"id{rng.integers(1e9):09d}-{i}" for i in range(n)])
    perm = rng.permutation(n)
    top = TopK(k)
    for lo in range(0, n, block):
        sel = perm[lo:lo + block]
        top.push(scores[sel], ids[sel], src=sel)
    got_scores, got_ids, extra = top.result()
    want = sorted(range(n), key=lambda i: (-scores[i], ids[i]))[:k]
    assert list(got_ids) == [ids[i] for i in want]
    assert list(extra["src"]) == want and list(got_scores) == [scores[i] for i in want]


def test_topk_merge_and_refuses_nan():
    a, b = TopK(2), TopK(2)
    a.push(np.array([1.0, 5.0]), np.array(["x", "y"]))
    b.push(np.array([5.0, 3.0]), np.array(["a", "b"]))
    a.merge(b)
    assert list(a.ids) == ["a", "y"]
    with pytest.raises(ValueError, match="non-finite"):
        a.push(np.array([np.nan]), np.array(["n"]))
