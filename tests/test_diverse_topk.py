"""Diversity-aware top-k: hand-checkable cases and a brute-force greedy reference."""
import csv
import json

import numpy as np
import pytest

from less_ray.config import save_config
from less_ray.data.io import write_jsonl
from less_ray.data.schema import Record
from less_ray.selection.folder import ScoreFolderWriter
from less_ray.scoring.job import ScoreConfig
from less_ray.selection.select import SelectConfig, run_select
from less_ray.selectors.diverse_topk import DiverseSelectConfig, run_diverse_select
from less_ray.testing.synthetic_store import write_store


def make_folder(tmp, ids, scores, feature_sets, shard_rows=1000):
    """A score folder (task 't'), its pool file and one pool store per feature set."""
    pool = [Record(i, "src", ({"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a"}))
            for i in ids]
    write_jsonl(pool, tmp / "pool.jsonl")
    stores = [str(write_store(tmp / f"store{c}", list(ids), np.asarray(f, np.float32), kind="adam",
                              checkpoint=f"ck{c}", shard_rows=shard_rows)) for c, f in enumerate(feature_sets)]
    w = ScoreFolderWriter(tmp / "scores", ["t"], pool=str(tmp / "pool.jsonl"))
    w.write("t", list(ids), ["src"] * len(ids), np.asarray(scores, np.float32))
    w.close({})
    save_config(ScoreConfig(pool_stores=stores, out=str(tmp / "scores")), tmp / "scores" / "score.config.yaml")
    return tmp / "scores"


def selected(out, name="top_n3.jsonl"):
    return [json.loads(x)["id"] for x in (out / "t" / name).read_text().splitlines()]


def unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


@pytest.fixture
def hand(tmp_path):
    # a-dup is a's duplicate (cos ~0.9995); c is 0.8 from a; x0/x1 tie in score and duplicate each other
    feats = {"a": unit([1, 0, 0, 0]), "a-dup": unit([1, 0.03, 0, 0]), "b": unit([0, 1, 0, 0]),
             "c": unit([0.8, 0.6, 0, 0]), "x1": unit([0, 0, 1, 0]), "x0": unit([0, 0, 1, 0.01]),
             "z": unit([0, 0, 0, 1])}
    scores = {"a": 10, "a-dup": 9.5, "b": 9, "c": 8, "x1": 7, "x0": 7, "z": 1}
    ids = list(feats)
    return make_folder(tmp_path, ids, [scores[i] for i in ids], [[feats[i] for i in ids]])


def test_duplicate_of_top_item_skipped(hand):
    from less_ray.cli import main
    assert main(["select", "--scores", str(hand), "--top-n", "5", "--diverse", "0.9"]) == 0
    r = json.loads((hand / "diverse_t0.9" / "diverse_summary.json").read_text())
    assert selected(hand / "diverse_t0.9", "top_n5.jsonl") == ["a", "b", "c", "x0", "z"]
    r = run_diverse_select(DiverseSelectConfig(scores=str(hand), out=str(hand / "d"), top_n=5, top_p=None,
                                               threshold=0.9))
    assert selected(hand / "d", "top_n5.jsonl") == ["a", "b", "c", "x0", "z"]  # x0 before x1: tie by id
    rows = list(csv.DictReader(open(hand / "d" / "t" / "skipped.csv")))
    assert [(x["id"], x["too_close_to"]) for x in rows] == [("a-dup", "a"), ("x1", "x0")]
    assert float(rows[0]["cosine"]) == pytest.approx(float(unit([1, 0.03, 0, 0])[0]), abs=1e-6)
    assert r["tasks"]["t"]["selected"] == 5 and r["tasks"]["t"]["skipped"] == 2


def test_threshold_one_is_plain_topk(hand):
    run_diverse_select(DiverseSelectConfig(scores=str(hand), out=str(hand / "d"), top_n=3, top_p=None,
                                           threshold=1.0))
    run_select(SelectConfig(scores=str(hand), top_n=3, top_p=None, sorted_csv=False))
    assert selected(hand / "d") == selected(hand) == ["a", "a-dup", "b"]
    # the records are the pool's, each with its score, as select writes them
    assert (hand / "d" / "t" / "top_n3.jsonl").read_text() == (hand / "t" / "top_n3.jsonl").read_text()


def test_too_few_distinct_candidates(hand):
    """Asked for all 7 with a strict threshold: only the 5 distinct directions come back."""
    r = run_diverse_select(DiverseSelectConfig(scores=str(hand), out=str(hand / "d"), top_n=7, top_p=None,
                                               threshold=0.9, window_factor=1.0))
    assert r["tasks"]["t"]["selected"] == 5 and r["tasks"]["t"]["skipped"] == 2


def reference_greedy(ids, scores, feats, k, thr):
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    chosen = []
    for i in order:
        if len(chosen) == k:
            break
        if all(float(feats[i] @ feats[j]) <= thr for j in chosen):
            chosen.append(i)
    return [ids[i] for i in chosen]


@pytest.mark.parametrize("features", ["first", "all"])
def test_random_case_matches_brute_force(tmp_path, features):
    rng = np.random.default_rng(0)
    n, d = 300, 6
    ids = [f"id{i:03d}" for i in range(n)]
    scores = np.round(rng.normal(size=n), 1)  # rounded: many ties
    f1 = np.stack([unit(v) for v in rng.normal(size=(n, d))])
    f2 = np.stack([unit(v) for v in rng.normal(size=(n, d))])
    folder = make_folder(tmp_path, ids, scores, [f1, f2], shard_rows=70)
    feats = f1 if features == "first" else np.stack([unit(v) for v in np.hstack([f1, f2])])
    k, thr = 30, 0.6
    run_diverse_select(DiverseSelectConfig(scores=str(folder), out=str(tmp_path / "d"), top_p=0.1, threshold=thr,
                                           features=features, window_factor=1.0, chunk=7, block_rows=50))
    got = selected(tmp_path / "d", "top_p0.1.jsonl")
    want = reference_greedy(ids, scores.astype(np.float32).astype(float), feats, k, thr)
    assert got == want and len(got) == k
