"""mods (MoDS): the set logic against a brute-force reference; the reward-model path; the CLI end to end."""
import json
import math
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from less_ray.selectors.mods import greedy_pick, mods_plan

RAY = {"num_cpus": 2, "max_actors": 1}




# ---- the set logic, against an independent brute force ----------------------------------------

def _farthest_points(x, members, k, start):
    """Farthest-point traversal over x[members] (dense distances, float64), from member `start`."""
    members = list(members)
    picked = [members[start]]
    while len(picked) < k:
        d = {i: min(np.linalg.norm(x[i].astype(np.float64) - x[p]) for p in picked) for i in members if i not in picked}
        picked.append(max(d, key=lambda i: (d[i], -i)))  # the farthest; ties: the first
    return picked


def _reference(rewards, x, g_all, budget, frac, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    n = len(rewards)
    hq = [i for i in range(n) if rewards[i] > alpha]
    k = min(budget, max(1, math.floor(frac * budget + 0.5)), len(hq))
    seed_set = _farthest_points(x, hq, k, int(rng.integers(len(hq)))) if k else []
    left = budget - len(seed_set)
    nec = [i for i in hq if i not in seed_set and g_all[i] < beta] if left > 0 else []
    k = min(left, len(nec))
    aug = _farthest_points(x, nec, k, int(rng.integers(len(nec)))) if k else []
    rest = sorted(set(range(n)) - set(seed_set) - set(aug), key=lambda i: (-np.float32(rewards[i]), i))
    return seed_set, aug, seed_set + aug + rest


@pytest.mark.parametrize("case", ["normal", "few_high_quality", "few_necessary", "all_seed"])
def test_mods_plan_matches_brute_force(case):
    rng = np.random.default_rng(7)
    n, budget = 60, 12
    x = rng.standard_normal((n, 5)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rewards, g_all = rng.standard_normal(n), rng.standard_normal(n)
    alpha, beta, frac = 0.0, 0.0, 0.25
    if case == "few_high_quality":
        alpha = np.sort(rewards)[-3]  # strictly above: 2 examples
    elif case == "few_necessary":
        beta = -10.0
        g_all[np.flatnonzero(rewards > alpha)[-2:]] = -20.0  # 2 necessary (unless picked as seed)
    elif case == "all_seed":
        frac = 1.0
    calls = []

    def generated(seed_idx, cands):
        calls.append((seed_idx.copy(), cands.copy()))
        return g_all[cands]

    scores, roles, info = mods_plan(rewards, x, budget, frac, alpha, beta, 3, generated)
    seed_ref, aug_ref, order_ref = _reference(rewards, x, g_all, budget, frac, alpha, beta, 3)
    ids = np.array([f"r{i:03d}" for i in range(n)])
    ranked = np.lexsort((ids, -scores.astype(np.float64))).tolist()  # select's order: score desc, id asc
    assert ranked == order_ref
    assert [i for i in ranked if roles[i] == "seed"] == seed_ref
    assert [i for i in ranked if roles[i] == "augmented"] == aug_ref
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    hq = np.flatnonzero(rewards > alpha)
    assert info["high_quality"] == len(hq) == info["seed"] + info["candidates"]
    assert info["seed"] + info["augmented"] + info["fill"] == info["budget"] == budget
    assert sum(info["roles"].values()) == n and info["roles"]["seed"] == len(seed_ref)
    if calls:  # the tuned model answers every high-quality example but the seed
        (s, c), = calls
        assert s.tolist() == seed_ref and c.tolist() == sorted(set(hq) - set(seed_ref))
        assert info["generated"] == len(c) and info["necessity"] == int((g_all[c] < beta).sum())
    if case == "normal":
        assert info["seed"] == 3 and info["augmented"] == 9 and info["fill"] == 0
    elif case == "few_high_quality":  # the seed's shortfall passes on; nothing left to answer
        assert info["seed"] == 2 and not calls and info["augmented"] == 0 and info["fill"] == 10
    elif case == "few_necessary":
        assert info["augmented"] == info["necessity"] <= 2 and info["fill"] == budget - 3 - info["augmented"]
    else:  # the budget is all seed: no fine-tune, no replies
        assert info["seed"] == budget and not calls and info["generated"] == 0


def test_greedy_pick_is_distinct_on_duplicates():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct points, 4 copies each
    members = np.arange(2, 12)
    picks = greedy_pick(x, members, 6, np.random.default_rng(0))
    assert len(set(picks.tolist())) == 6 and set(picks.tolist()) <= set(members.tolist())
    assert len({tuple(x[i]) for i in picks[:3]}) == 3  # the greedy covers the distinct points first


# ---- the reward-model path ----------------------------------------------------------------------

def _reward_model(tiny_model_dir, folder):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from less_ray.models import load_tokenizer
    tok = load_tokenizer(tiny_model_dir)
    config = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        LlamaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_default_thresholds_follow_the_quality_source():
    from less_ray.selectors.mods import ModsConfig, thresholds
    assert thresholds(ModsConfig(model="m")) == (2.5, 2.5)  # the judge's 0-5 rating: mid-scale
    assert thresholds(ModsConfig(model="m", reward_model="r")) == (0.0, 0.0)  # a reward's sign
    assert thresholds(ModsConfig(model="m", quality_threshold=1.0, necessity_threshold=-1.0)) == (1.0, -1.0)


def test_reward_model_scores_quality_and_necessity(demo, tiny_model_dir):
    from less_ray.data.io import read_records
    from less_ray.selectors import load_selector_config, run_selector
    from less_ray.selectors.judge import RewardModel, record_parts
    root = demo["root"]
    rm = _reward_model(tiny_model_dir, root / "rm")
    out = root / "mods_rm"
    s = run_selector("mods", load_selector_config("mods", None, {
        "pool": demo["pool"], "out": str(out), "model": str(tiny_model_dir), "reward_model": rm,
        "embeddings": demo["emb"], "necessity_max_new_tokens": 8, "ft_epochs": 1, **RAY}))
    assert s["quality_source"].startswith("reward model") and not s["quality_reused"]
    sets = s["sets"]
    assert sets["quality_threshold"] == sets["necessity_threshold"] == 0.0  # the reward's sign
    records = [r.to_dict() for r in read_records(demo["pool"]).records]
    ref = RewardModel(rm, 8, 1024).score([record_parts(r["messages"]) for r in records])
    t = pq.read_table(out / "quality" / "all" / "scores.parquet").to_pydict()
    assert t["id"] == [r["id"] for r in records]
    np.testing.assert_allclose(t["score"], ref, atol=1e-5)
    assert sets["high_quality"] == int((ref.astype(np.float32) > 0).sum()) > sets["seed"] == 3
    gen = pq.read_table(out / "_necessity" / "generated.parquet").to_pydict()
    by_id = {r["id"]: r for r in records}
    assert len(gen["id"]) == sets["generated"] == sets["candidates"] > 0
    ref_g = RewardModel(rm, 8, 1024).score([(record_parts(by_id[i]["messages"])[0], a)
                                            for i, a in zip(gen["id"], gen["generated"])])
    np.testing.assert_allclose(gen["reward"], ref_g, atol=1e-5)
    assert sets["necessity"] == int((ref_g < 0).sum())
    assert s["finetune"]["examples"] == 3 and (out / "_necessity" / "initial_model" / "adapter_config.json").exists()
    assert s["select"]["all"]["selected"] == 10


# ---- the CLI, end to end ------------------------------------------------------------------------

def test_mods_cli_end_to_end(demo, tiny_model_dir, capsys):
    from less_ray.cli import main
    from less_ray.data.io import read_records
    from less_ray.selectors import load_selector_config, run_selector
    from less_ray.selectors.judge import Quality, record_parts
    records = [r.to_dict() for r in read_records(demo["pool"]).records]
    # the tiny random judge rates everything near 2.15 (all below the default 2.5): its median
    # as alpha and beta, so that every step has members
    rating = Quality(None, str(tiny_model_dir), 8, 512, False).score([record_parts(r["messages"]) for r in records])
    cut = float(np.median(rating))
    out = demo["root"] / "mods_cli"
    t0 = time.time()
    assert main(["selector", "mods", "--pool", demo["pool"], "--targets", f"arith={demo['targets']}", "--out",
                 str(out), "--top-p", "0.05", "--num-cpus", "2", "--set", f"model={tiny_model_dir}",
                 "--set", "max_actors=1", "--set", f"embeddings={demo['emb']}", "--set", f"quality_threshold={cut}",
                 "--set", f"necessity_threshold={cut}", "--set", "necessity_max_new_tokens=32"]) == 0
    seconds = time.time() - t0
    summary = json.loads(capsys.readouterr().out)
    assert seconds < 120 and summary["seconds"] <= seconds
    sel = [json.loads(x) for x in (out / "all" / "top_p0.05.jsonl").read_text().splitlines()]
    assert len(sel) == len({r["id"] for r in sel}) == 10 and {r["id"] for r in sel} <= {r["id"] for r in records}
    sets = summary["sets"]
    assert summary["quality_source"].startswith("expected ALPAGASUS rating")
    t = pq.read_table(out / "quality" / "all" / "scores.parquet").to_pydict()
    np.testing.assert_allclose(t["score"], rating, atol=1e-5)  # the judge's rating is the quality
    assert sets["high_quality"] == int((rating.astype(np.float32) > np.float32(cut)).sum()) > 3
    assert sets["seed"] + sets["augmented"] + sets["fill"] == sets["budget"] == 10 and sets["seed"] == 3
    assert sets["high_quality"] == sets["seed"] + sets["candidates"] == sets["seed"] + sets["generated"]
    assert 0 < sets["necessity"] <= sets["generated"] and sum(sets["roles"].values()) == 200
    scores = pq.read_table(out / "all" / "scores.parquet").to_pydict()
    role = dict(zip(scores["id"], scores["best_subtask"]))
    assert sum(role[r["id"]] in ("seed", "augmented") for r in sel) == sets["seed"] + sets["augmented"]
    assert {"seconds_quality", "seconds_embeddings", "seconds_finetune", "seconds_generate"} <= set(summary)
    # a rerun reuses the pool's ratings; an all-seed budget needs no fine-tune
    again = run_selector("mods", load_selector_config("mods", out / "selector.config.yaml", {"seed_fraction": 1.0}))
    assert again["quality_reused"] and again["sets"]["seed"] == 10 and again["sets"]["generated"] == 0
    assert main(["config", "selector:mods"]) == 0
    shown = capsys.readouterr().out
    assert all(k in shown for k in ("quality_threshold", "seed_fraction", "necessity_threshold", "base_model"))
