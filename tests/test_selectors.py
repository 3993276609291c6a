"""Selectors beside LESS: random, full, RDS, k-center — against hand-checkable cases and dense
references; reachable from the CLI and the pipeline config."""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from less_ray.selectors import get_selector, load_selector_config, run_selector
from less_ray.selectors.kcenter import (KCenterConfig, greedy_scores, k_center_greedy, order_scores,
                                        target_cluster_choice, targeted_scores)
from less_ray.selection.seeded import seeded_uniform
from less_ray.selectors.rds import score_stores
from less_ray.testing.synthetic_store import write_store

RAY = {"num_cpus": 2, "max_actors": 1}




def _scores(folder, task):
    t = pq.read_table(Path(folder) / task / "scores.parquet")
    return dict(zip(t.column("id").to_pylist(), t.column("score").to_numpy().tolist()))


def _selected(folder, task, p=0.05):
    return [json.loads(line) for line in (Path(folder) / task / f"top_p{p:g}.jsonl").read_text().splitlines()]


# ---- random / full ----------------------------------------------------------------------------

def test_seeded_uniform_depends_on_id_and_seed_only():
    ids = [f"x{i}" for i in range(4000)]
    u = seeded_uniform(ids, 7)
    assert np.array_equal(u, seeded_uniform(ids, 7))
    assert np.array_equal(u[::-1], seeded_uniform(ids[::-1], 7))  # not pool order
    assert not np.array_equal(u, seeded_uniform(ids, 8))
    assert ((u >= 0) & (u < 1)).all()
    # uniform: each decile holds 400 +- 5 sigma (sigma = sqrt(4000 * .1 * .9) = 19)
    assert np.all(np.abs(np.bincount((u * 10).astype(int), minlength=10) - 400) < 95)


def test_random_is_deterministic_across_sharding_and_differs_by_seed(demo):
    root = demo["root"]
    a = run_selector("random", load_selector_config("random", None, {
        "pool": demo["pool"], "out": str(root / "rand_a"), "seed": 3, "shard_rows": 64, **RAY}))
    b = run_selector("random", load_selector_config("random", None, {
        "pool": demo["pool"], "out": str(root / "rand_b"), "seed": 3, "shard_rows": 200, **RAY}))
    assert a["pool_rows"] == b["pool_rows"] == 200 and a["select"]["all"]["selected"] == 10
    assert _selected(root / "rand_a", "all") == _selected(root / "rand_b", "all")
    ids = sorted(_scores(root / "rand_a", "all"))
    k10 = set(np.array(ids)[np.argsort(-seeded_uniform(ids, 4))[:10]].tolist())
    assert {r["id"] for r in _selected(root / "rand_a", "all")} != k10  # another seed, another subset


def test_full_selects_the_whole_pool(demo):
    from less_ray.data.io import read_records
    out = demo["root"] / "full"
    s = run_selector("full", load_selector_config("full", None, {"pool": demo["pool"], "out": str(out), **RAY}))
    pool_ids = sorted(r.id for r in read_records(demo["pool"]).records)
    assert s["select"]["all"]["selected"] == 200
    assert sorted(r["id"] for r in _selected(out, "all", 1.0)) == pool_ids
    _report_renders(out, "full", 1.0)


def _report_renders(folder, selector, top_p=0.05):
    """The report renders for this selector's score folder and describes its selection."""
    from less_ray.selection.report import ReportConfig, run_report
    page = run_report(ReportConfig(scores=str(folder), top_p=top_p, dedup_max=200)).read_text()
    assert selector in page and f"top_p{top_p:g}.jsonl" in page and "Traceback" not in page


# ---- RDS --------------------------------------------------------------------------------------

def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_rds_scores_match_dense_cosine_with_subtask_mean_and_max(tmp_path):
    rng = np.random.default_rng(0)
    pool, tgt = _unit(rng, 300, 16), _unit(rng, 7, 16)
    subtasks = ["a", "a", "b", "b", "b", "c", "a"]
    ids = [f"p{i}" for i in range(300)]
    ps = write_store(tmp_path / "pool", ids, pool, kind="embedding", checkpoint="enc", proj_type="identity",
                     shard_rows=64)
    ts = write_store(tmp_path / "t", [f"t{i}" for i in range(7)], tgt, kind="embedding", checkpoint="enc",
                     proj_type="identity", subtasks=subtasks, task="task")
    score_stores(ps, {"task": ts}, str(tmp_path / "out"), "pool.jsonl", block_rows=50)
    cos = pool @ tgt.T  # dense reference
    means = np.stack([cos[:, [i for i, s in enumerate(subtasks) if s == k]].mean(1) for k in "abc"], 1)
    t = pq.read_table(tmp_path / "out" / "task" / "scores.parquet")
    assert t.column("id").to_pylist() == ids
    np.testing.assert_allclose(t.column("score").to_numpy(), means.max(1), atol=1e-5)
    assert t.column("best_subtask").to_pylist() == [("abc")[j] for j in means.argmax(1)]


def test_minilm_embeddings_match_sentence_transformers(demo):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from less_ray.data.io import read_records
    from less_ray.selectors.embeddings import TextEncoder, minilm_dir
    rows = [r.to_dict() for r in read_records(demo["pool"]).records[:12]]
    enc = TextEncoder("minilm", str(minilm_dir()), max_tokens=256, batch_size=5)
    ours, _, _ = enc.embed(rows)
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode([enc.text(r["messages"]) for r in rows],
                                                                     normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_model_embedding_is_mean_last_hidden_state_whatever_the_padding(demo, tiny_model_dir):
    import torch

    from less_ray.data.io import read_records
    from less_ray.models import load_model_and_tokenizer
    from less_ray.selectors.embeddings import TextEncoder
    rows = [r.to_dict() for r in read_records(demo["pool"]).records[:6]]
    enc = TextEncoder("model", str(tiny_model_dir), max_tokens=64, batch_size=6)
    batched, _, n_tok = enc.embed(rows)
    lm, _ = load_model_and_tokenizer(tiny_model_dir)
    for i, r in enumerate(rows):  # one example at a time, no padding: the full LM's last hidden state
        ids = torch.tensor([enc.token_ids(r["messages"])])
        with torch.no_grad():
            h = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0].mean(0).numpy()
        assert n_tok[i] == ids.shape[1]
        np.testing.assert_allclose(batched[i], h / np.linalg.norm(h), atol=1e-5)
    assert len(set(n_tok.tolist())) > 1  # the batch really was padded


def test_rds_end_to_end_prefers_the_target_family_via_cli(demo, capsys):
    from less_ray.cli import main
    out = demo["root"] / "rds"
    config = demo["root"] / "rds.yaml"
    config.write_text(f"embeddings: {demo['emb']}\nmax_actors: 1\n")
    assert main(["selector", "rds", "--config", str(config), "--pool", demo["pool"], "--targets",
                 f"arith={demo['targets']}", "--out", str(out), "--num-cpus", "2", "--top-p", "0.05"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["select"]["arith"]["selected"] == 10
    sel = _selected(out, "arith")
    assert sum(r["source"] == "demo/arithmetic" for r in sel) >= 8  # pool share: 10%
    assert len(list(Path(demo["emb"]).glob("minilm-*/pool/manifest.json"))) == 1
    assert (out / "selector.config.yaml").exists()


# ---- k-center ---------------------------------------------------------------------------------

def test_k_center_greedy_on_a_line():
    x = np.array([[0.], [1.], [2.], [10.], [11.], [20.]])
    picks, dist, final = k_center_greedy(x, 4, start=0)
    # from 0: 20 is farthest (20); then 10 (10 from both); then 2 (2 from 0, 8 from 10); then a tie
    # at distance 1 between 1 and 11: the first index (1) wins
    assert picks.tolist() == [0, 5, 3, 2] and dist[1:].tolist() == [20, 10, 2]
    assert math.isinf(dist[0])
    np.testing.assert_allclose(final, [0, 1, 0, 0, 1, 0])


def _cover(x, centers):
    return np.linalg.norm(x[:, None] - x[centers][None], axis=2).min(1)


def test_k_center_farthest_point_property_and_2_approximation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 3))
    picks, dist, final = k_center_greedy(x, 4, start=5)
    for r in range(1, 4):  # each pick is a farthest point from the earlier picks, at that distance
        d = _cover(x, picks[:r])
        assert d[picks[r]] == pytest.approx(d.max()) and dist[r] == pytest.approx(d.max())
    assert np.all(np.diff(dist[1:]) <= 1e-12)
    np.testing.assert_allclose(final, _cover(x, picks), atol=1e-9)
    optimum = min(_cover(x, list(c)).max() for c in itertools.combinations(range(12), 4))  # brute force
    assert final.max() <= 2 * optimum + 1e-9


def test_order_scores_make_select_take_the_greedy_prefix():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    scores, info = greedy_scores(x, 10, seed=0)
    picks, _, _ = k_center_greedy(x, 10, start=info["start"])
    ids = np.array([f"r{i:02d}" for i in range(40)])
    ranked = np.lexsort((ids, -scores.astype(np.float64)))  # select's order: score desc, id asc
    for k in range(1, 11):
        assert set(ranked[:k].tolist()) == set(picks[:k].tolist())
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    assert scores[picks[-1]] > np.delete(scores, picks).max()


def test_order_scores_on_ties():
    picks, dist, final = np.array([0, 2]), np.array([math.inf, 1.0]), np.array([0.0, 1.0, 0.0])
    s = order_scores(3, picks, dist, final)  # row 1 ends at the last pick's distance: kept below it
    assert s[0] > s[2] > s[1]


def test_target_cluster_choice():
    assert target_cluster_choice(np.array([2, 2, 1, 1, 0]), 4, 1) == ([1], [1, 2, 2, 0])  # tie: smaller index
    assert target_cluster_choice(np.array([3, 3, 3, 0]), 4, 2) == ([3, 0], [1, 0, 0, 3])
    assert target_cluster_choice(np.array([3, 3]), 4, 2) == ([3], [0, 0, 0, 2])  # never a cluster no target is in


def test_kmeans_picks_the_targets_cluster():
    rng = np.random.default_rng(3)
    centers = np.eye(8)[:4] * 10
    blob = np.repeat(np.arange(4), 50)
    x = (centers[blob] + rng.standard_normal((200, 8)) * 0.3).astype(np.float32)
    targets = {"t2": (centers[[2] * 5] + rng.standard_normal((5, 8)) * 0.3).astype(np.float32),
               "t13": (centers[[1, 1, 1, 3, 3]] + rng.standard_normal((5, 8)) * 0.3).astype(np.float32)}
    cfg = KCenterConfig(n_clusters=4, target_clusters=1, top_p=0.05, seed=0)
    scores, best, info = targeted_scores(x, targets, cfg)
    top = np.argsort(-scores["t2"], kind="stable")[:10]
    assert (blob[top] == 2).all() and info["t2"]["candidates"] == 50 and info["t2"]["budget"] == 10
    assert (scores["t2"][blob == 2].min() > scores["t2"][blob != 2].max())
    assert (blob[np.argsort(-scores["t13"], kind="stable")[:50]] == 1).all()  # the majority cluster
    cfg2 = KCenterConfig(n_clusters=4, target_clusters=2, budget=100, seed=0)
    s2, _, info2 = targeted_scores(x, {"t13": targets["t13"]}, cfg2)
    assert set(blob[np.argsort(-s2["t13"], kind="stable")[:100]].tolist()) == {1, 3}
    assert len(info2["t13"]["chosen_clusters"]) == 2


def test_k_center_greedy_never_repeats_a_pick_on_duplicate_rows():
    """Once only duplicates of the picks remain (every distance 0), the greedy takes one of them."""
    x = np.repeat(np.eye(3, dtype=np.float32), 3, axis=0)  # 3 distinct rows, 3 copies each
    picks, dist, final = k_center_greedy(x, 9, start=0)
    assert sorted(picks.tolist()) == list(range(9))
    assert dist[3:].max() == 0 and (final == 0).all()


def test_kcenter_selectors_end_to_end(demo):
    for name in ("kcenter", "kcenter_all"):
        cfg = load_selector_config(name, None, {"pool": demo["pool"], "targets": {"arith": demo["targets"]},
                                                "out": str(demo["root"] / name), "embeddings": demo["emb"],
                                                "n_clusters": 10, **RAY} if name == "kcenter" else
                                   {"pool": demo["pool"], "out": str(demo["root"] / name), "embeddings": demo["emb"],
                                    **RAY})
        s = run_selector(name, cfg)
        task = "arith" if name == "kcenter" else "all"
        assert s["select"][task]["selected"] == 10 and len(_selected(demo["root"] / name, task)) == 10
        _report_renders(demo["root"] / name, name)
    sel_k = _selected(demo["root"] / "kcenter", "arith")
    info = json.loads((demo["root"] / "kcenter" / "score_summary.json").read_text())["tasks"]["arith"]
    counts = info["target_cluster_counts"]
    assert info["chosen_clusters"] == [int(np.argmax(counts))] and sum(counts) == 6
    t = pq.read_table(demo["root"] / "kcenter" / "arith" / "scores.parquet").to_pydict()
    cluster = dict(zip(t["id"], t["best_subtask"]))
    in_chosen = [cluster[r["id"]] == f"cluster{info['chosen_clusters'][0]}" for r in sel_k]
    assert all(in_chosen) if info["candidates"] >= 10 else sum(in_chosen) == info["candidates"]
    diverse = {r["source"] for r in _selected(demo["root"] / "kcenter_all", "all")}
    assert len(diverse) >= 5  # 10 picks spread over the pool's 10 families


# ---- reachability -----------------------------------------------------------------------------

def test_unknown_selector_and_missing_targets_are_clear_errors(demo):
    with pytest.raises(ValueError, match="unknown selector 'nope'"):
        get_selector("nope")
    with pytest.raises(ValueError, match="targeted"):
        run_selector("rds", load_selector_config("rds", None, {"pool": demo["pool"], "out": str(demo["root"] / "x")}))


def test_pipeline_config_runs_extra_selectors(demo, tiny_model_dir, tmp_path):
    import yaml

    from less_ray.config import load_config
    from less_ray.pipeline import PipelineConfig, run_pipeline
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "base_model": str(tiny_model_dir), "pool": demo["pool"],
        "targets": {"arith": demo["targets"]}, "stages": ["selectors"], "select": {"top_p": 0.1},
        "selectors": {"random": {"shard_rows": 100}, "kcenter_all": {"embeddings": demo["emb"]},
                      "rds": {"embeddings": demo["emb"], "top_p": 0.05}}}))
    summary = run_pipeline(load_config(PipelineConfig, path))
    root = tmp_path / "run" / "selectors"
    assert summary["selectors"]["random"]["select"]["all"]["selected"] == 20  # the pipeline's top_p
    assert len(_selected(root / "kcenter_all", "all", 0.1)) == 20
    assert len(_selected(root / "rds", "arith", 0.05)) == 10  # the selector's own option wins
    ledger = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert {"selector/random", "selector/kcenter_all", "selector/rds"} <= set(ledger)
    with pytest.raises(Exception, match="selectors.rds"):
        path.write_text(yaml.safe_dump({"out": str(tmp_path / "r2"), "base_model": str(tiny_model_dir),
                                        "pool": demo["pool"], "targets": {"a": demo["targets"]},
                                        "stages": ["selectors"], "selectors": {"rds": {"no_such_option": 1}}}))
        run_pipeline(load_config(PipelineConfig, path))
