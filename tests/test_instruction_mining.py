"""instruction_mining (InstructMining): MTLD against hand-worked texts, KNN-k against brute force,
the least-squares rule against planted weights, given coefficients against the dense numpy rule,
and the whole selector through the CLI (a small fit on the tiny model)."""
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from less_ray.selectors.indicators import (draw_subsets, fit_rule, knn_mean_distance, mtld, rule_scores,
                                           standardize, words)

TIMES = {}


# ---- pure parts --------------------------------------------------------------------------------

def test_mtld_matches_hand_worked_texts():
    # "A, a x! Y z x." -> words a a x y z x (lowercased, punctuation dropped)
    # forward:  a (1/1), a (1/2 = .50 <= .72: factor 1, restart), x y z (1), x (3/4 = .75):
    #           partial (1 - .75) / (1 - .72) = .892857; 6 / 1.892857 = 3.169811
    # backward: x z y (1), x (3/4 = .75), a (4/5 = .80), a (4/6 = .667: factor 1), nothing left: 6 / 1 = 6
    assert words("A, a x! Y z x.") == ["a", "a", "x", "y", "z", "x"]
    assert mtld("A, a x! Y z x.") == pytest.approx((6 / (1 + 0.25 / 0.28) + 6) / 2, abs=1e-12)
    assert mtld("A, a x! Y z x.") == pytest.approx(4.584906, abs=1e-6)
    # a b a b a b c d: forward factors end at words 3 and 6 (2/3 each), c d left at TTR 1 (partial 0):
    # 8 / 2 = 4; backward d c b a (1), b (4/5), a (4/6: factor 1), b a (TTR 1): 8 / 1 = 8
    assert mtld("a b a b a b c d") == pytest.approx(6.0)
    assert mtld(["a", "b", "a", "b", "a", "b", "c", "d"]) == pytest.approx(6.0)  # words given
    assert mtld("") == 0.0
    assert mtld("one two three") == 3.0  # no factor at all: the word count (the module's convention)
    # threshold: at .5, "a a" is one factor each way (1/2 <= .5), at .4 a partial (1 - .5) / .6
    assert mtld("a a", threshold=0.5) == pytest.approx(2.0)
    assert mtld("a a", threshold=0.4) == pytest.approx(2 / (0.5 / 0.6))


def test_knn_mean_distance_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((53, 8)).astype(np.float32)
    x[7] = x[3]  # a duplicate: each is the other's neighbour at distance 0
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    ref = np.sort(d, 1)[:, :6].mean(1)
    for chunk in (7, 53, 1000):
        np.testing.assert_allclose(knn_mean_distance(x, 6, chunk=chunk), ref, rtol=1e-4, atol=1e-4)
    assert np.sort(d[3])[0] == 0
    np.testing.assert_allclose(knn_mean_distance(x[:4], 6), np.sort(d[:4, :4], 1)[:, :3].mean(1), atol=1e-4)
    assert knn_mean_distance(x[:1], 6).tolist() == [0.0]


def test_fit_recovers_planted_weights_and_refuses_too_few_subsets():
    rng = np.random.default_rng(1)
    names = ["reward", "response_length", "perplexity", "mtld", "knn"]
    true_w, b = np.array([-0.3, 0.05, 0.2, -0.1, 0.4]), 1.2
    feats = rng.standard_normal((12, 5))
    losses = np.exp(b + feats @ true_w)
    rule = fit_rule(feats, losses, names)
    assert rule["intercept"] == pytest.approx(b, abs=1e-9) and rule["r2"] == pytest.approx(1.0)
    np.testing.assert_allclose([rule["weights"][n] for n in names], true_w, atol=1e-9)
    noisy = fit_rule(feats, losses * np.exp(0.01 * rng.standard_normal(12)), names)
    np.testing.assert_allclose([noisy["weights"][n] for n in names], true_w, atol=0.05)
    assert 0.9 < noisy["r2"] < 1.0
    with pytest.raises(ValueError, match="fit_subsets must exceed 6"):
        fit_rule(feats[:6], losses[:6], names)
    # the scores: -(w . z), lower predicted loss first
    z, mean, std = standardize(feats)
    np.testing.assert_allclose(rule_scores(z, names, rule["weights"]), -(z @ true_w), atol=1e-9)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    assert standardize(np.ones((4, 1)))[0].tolist() == [[0.0]] * 4  # a constant column: 0


def test_subsets_are_seeded_and_the_held_out_eval_sample_is_in_none():
    scored = np.ones(200, bool)
    scored[[5, 9]] = False
    subsets, held = draw_subsets(scored, 8, 16, 20, seed=3)
    again, held2 = draw_subsets(scored, 8, 16, 20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again)) and np.array_equal(held, held2)
    used = np.concatenate(subsets)
    assert len(subsets) == 8 and all(len(set(s.tolist())) == 16 for s in subsets) and len(held) == 20
    assert not set(used.tolist()) & set(held.tolist())
    assert not {5, 9} & (set(used.tolist()) | set(held.tolist()))  # unscored rows join nothing
    with_targets, none = draw_subsets(scored, 8, 16, None, seed=3)  # targets are the eval set: no held-out
    assert none is None and len(with_targets) == 8
    assert not all(np.array_equal(a, b) for a, b in zip(subsets, draw_subsets(scored, 8, 16, 20, seed=4)[0]))
    with pytest.raises(ValueError, match="cannot give subsets of 16"):
        draw_subsets(scored, 8, 16, 190, seed=3)


# ---- the selector ------------------------------------------------------------------------------



def _shared(demo, model):
    root = demo["root"]
    return ["--set", f"model={model}", "--set", "max_actors=1", "--set", "max_seq_length=256",
            "--set", f"quality={root / 'quality'}", "--set", f"embeddings={root / 'emb'}",
            "--set", f"pool_indicators={root / 'pool_ind'}"]


@pytest.fixture(scope="module")
def fitted(demo, tiny_model_dir):
    import contextlib
    import io

    from less_ray.cli import main
    out = demo["root"] / "fit"
    t0 = time.time()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["selector", "instruction_mining", "--pool", demo["pool"], "--targets",
                     f"arith={demo['targets']}", "--out", str(out), "--top-p", "0.05", "--num-cpus", "2",
                     *_shared(demo, tiny_model_dir), "--set", "fit_subsets=8", "--set", "fit_subset_size=8"]) == 0
    TIMES["end_to_end"] = time.time() - t0
    return out, json.loads(buf.getvalue())


def test_end_to_end_via_cli_fits_and_selects(demo, tiny_model_dir, fitted):
    from less_ray.data.io import read_records
    out, summary = fitted
    print(f"end-to-end seconds: {TIMES['end_to_end']:.1f}")
    pool_ids = {r.id for r in read_records(demo["pool"]).records}
    top = [json.loads(line)["id"] for line in (out / "all" / "top_p0.05.jsonl").read_text().splitlines()]
    assert len(top) == len(set(top)) == 10 and set(top) <= pool_ids
    names = ["reward", "response_length", "perplexity", "mtld", "knn"]
    rule, fit = summary["rule"], summary["fit"]
    assert rule["source"] == "fit" and set(rule["weights"]) == set(names)
    assert all(np.isfinite(list(rule["weights"].values()))) and rule["r2"] is not None
    assert len(fit["eval_losses"]) == 8 and all(v > 0 for v in fit["eval_losses"])
    assert fit["eval_set"].startswith("targets ['arith']") and fit["trained_examples"] == [8] * 8
    assert set(summary["seconds_per_step"]) >= {"length_mtld", "perplexity", "reward", "knn", "fit", "write"}
    ind = pq.read_table(out / "indicators.parquet").to_pydict()
    assert len(ind["id"]) == 200 and all(ind["scored"])
    assert all(v >= 1 for v in ind["response_length"]) and all(v > 0 for v in ind["knn"])
    # the rule refitted from the recorded subset means reproduces the summary's weights
    again = fit_rule(np.array(fit["subset_mean_indicators"]), np.array(fit["eval_losses"]), names)
    np.testing.assert_allclose([again["weights"][n] for n in names], [rule["weights"][n] for n in names], atol=1e-9)
    assert (Path(summary["quality"]) / "all" / "scores.parquet").exists()
    _perplexity_is_hf_loss(demo, tiny_model_dir, ind)
    # perplexity is loss_stats' base pass, in the loss selectors' shared folder: the `perplexity`
    # selector beside it runs no pass and ranks by the same losses
    from less_ray.selectors import load_selector_config, run_selector
    assert Path(summary["stats"]).parent == out.parent / "_loss_stats" and summary["stats_jobs"][0]["passes"] == ["base"]
    ppl = run_selector("perplexity", load_selector_config("perplexity", None, {
        "pool": demo["pool"], "out": str(out.parent / "ppl"), "top_p": None, "num_cpus": 2},
        {"base_model": str(tiny_model_dir), "max_seq_length": 256, "max_actors": 1, "perplexity_keep": "low"}))
    assert ppl["stats"] == summary["stats"] and ppl["stats_jobs"] == []
    t = pq.read_table(out.parent / "ppl" / "all" / "scores.parquet").to_pydict()
    assert t["id"] == ind["id"]
    np.testing.assert_allclose(t["score"], -np.asarray(ind["perplexity"]), rtol=1e-6)


def _perplexity_is_hf_loss(demo, model_dir, ind, n=6):
    """perplexity = the mean answer-token loss: HF's own loss of the example alone (no padding)."""
    import torch

    from less_ray.core.formatting import FormatConfig, tokenize_messages
    from less_ray.data.io import read_records
    from less_ray.models import load_model_and_tokenizer
    lm, tok = load_model_and_tokenizer(model_dir)
    recs = {r.id: r for r in read_records(demo["pool"]).records}
    for i in range(n):
        t = tokenize_messages(list(recs[ind["id"][i]].messages), tok, FormatConfig("less", 256))
        with torch.no_grad():
            ref = lm(input_ids=torch.tensor([t.input_ids]), labels=torch.tensor([t.labels])).loss.item()
        assert ind["perplexity"][i] == pytest.approx(ref, rel=1e-4, abs=1e-5)


def test_given_coefficients_skip_the_fit_and_rank_by_the_dense_rule(demo, tiny_model_dir, fitted):
    from less_ray.selectors import load_selector_config, run_selector
    root = demo["root"]
    w = {"reward": -0.5, "response_length": 0.2, "perplexity": 1.0, "mtld": -0.3}  # knn left out: weight 0
    sets = {"model": str(tiny_model_dir), "max_actors": 1, "max_seq_length": 256, "quality": str(root / "quality"),
            "embeddings": str(root / "emb"), "pool_indicators": str(root / "pool_ind"),
            "coefficients": w, "fit_subsets": 2}  # too few to fit: not fitted
    t0 = time.time()
    s = run_selector("instruction_mining", load_selector_config("instruction_mining", None, {
        "pool": demo["pool"], "out": str(root / "given"), "top_p": 0.05, "num_cpus": 2}, sets))
    TIMES["given"] = time.time() - t0
    assert s["fit"] is None and s["rule"]["source"] == "given" and "fit" not in s["seconds_per_step"]
    # the fitted run's per-example folders, reused: quality, pool indicators and embeddings
    assert s["quality"] == str(root / "quality") and s["pool_indicators"] == str(root / "pool_ind")
    ind = pq.read_table(root / "given" / "indicators.parquet").to_pydict()
    names = s["indicators"]
    x = np.stack([np.asarray(ind[n], np.float64) for n in names], 1)
    z = (x - x.mean(0)) / x.std(0)
    ref = -(z @ np.array([w.get(n, 0.0) for n in names]))
    t = pq.read_table(root / "given" / "all" / "scores.parquet")
    assert t.column("id").to_pylist() == ind["id"]
    np.testing.assert_allclose(t.column("score").to_numpy(), ref, rtol=1e-5, atol=1e-5)
    order = sorted(range(len(ref)), key=lambda i: (-np.float32(ref[i]), ind["id"][i]))[:10]
    top = [json.loads(line)["id"] for line in (root / "given" / "all" / "top_p0.05.jsonl").read_text().splitlines()]
    assert sorted(top) == sorted(ind["id"][i] for i in order)
    # the same indicators as the fitted run (shared quality, stats and embeddings)
    first = pq.read_table(fitted[0] / "indicators.parquet").to_pydict()
    np.testing.assert_allclose(first["perplexity"], ind["perplexity"])
    print(f"given seconds: {TIMES['given']:.1f}")


def test_without_targets_the_eval_set_is_a_held_out_pool_sample(demo, tiny_model_dir):
    from less_ray.selectors import load_selector_config, run_selector
    names = ["response_length", "perplexity", "mtld"]  # no judge, no embeddings: a quick run
    sets = {"model": str(tiny_model_dir), "max_actors": 1, "max_seq_length": 256, "indicators": names,
            "fit_subsets": 5, "fit_subset_size": 4, "eval_size": 8, "seed": 1,
            "pool_indicators": str(demo["root"] / "pool_ind")}
    s = run_selector("instruction_mining", load_selector_config("instruction_mining", None, {
        "pool": demo["pool"], "out": str(demo["root"] / "held"), "top_p": None, "num_cpus": 2}, sets))
    fit = s["fit"]
    assert fit["eval_set"].startswith("no targets given: a held-out pool sample of 8 examples (seed 1)")
    assert len(fit["eval_losses"]) == 5 and set(s["rule"]["weights"]) == set(names) and "quality" not in s
    assert len({i for ids in fit["subset_ids"] for i in ids}) <= 20


def test_config_errors_come_before_any_work(demo, tiny_model_dir):
    from less_ray.selectors import load_selector_config, run_selector
    base = {"pool": demo["pool"], "out": str(demo["root"] / "bad")}
    for sets, msg in (({"model": str(tiny_model_dir), "fit_subsets": 6}, "must exceed 6"),
                      ({"model": str(tiny_model_dir), "indicators": ["reward", "unieval"]}, "distinct names"),
                      ({"model": str(tiny_model_dir), "coefficients": {"knn": 1.0}, "indicators": ["reward"]},
                       "not among indicators"),
                      ({}, "needs model")):
        with pytest.raises(ValueError, match=msg):
            run_selector("instruction_mining", load_selector_config("instruction_mining", None, base, sets))


def test_config_lists_the_knobs(capsys):
    from less_ray.cli import main
    assert main(["config", "selector:instruction_mining"]) == 0
    text = capsys.readouterr().out
    for knob in ("fit_subsets: int = 12", "fit_subset_size: int = 16", "coefficients:", "knn_k: int = 6",
                 "mtld_threshold: float = 0.72", "129", "model: str or null = null  # the base model"):
        assert knob in text


def test_mods_reuses_the_quality_folder_and_a_changed_judge_setting_rescores(demo, tiny_model_dir, fitted):
    """One quality pass serves instruction_mining and mods when both name the folder; a setting
    that changes the scores (field_max_tokens) empties it and scores again."""
    import os

    from less_ray.selectors import load_selector_config, run_selector
    from less_ray.selectors.judge import Quality, record_parts
    from less_ray.data.io import read_records
    out, summary = fitted
    qdir = demo["root"] / "quality"
    assert summary["quality"] == str(qdir) and not summary["quality_reused"]
    scores = qdir / "all" / "scores.parquet"
    stamp = os.stat(scores).st_mtime_ns
    base = {"pool": demo["pool"], "top_p": 0.05, "num_cpus": 2}
    sets = {"model": str(tiny_model_dir), "max_actors": 1, "quality": str(qdir), "embeddings": str(demo["root"] / "emb"),
            "seed_fraction": 1.0, "quality_threshold": -1.0}  # all high quality, all seed: no fine-tune
    s = run_selector("mods", load_selector_config("mods", None, {**base, "out": str(demo["root"] / "mods_q")}, sets))
    assert s["quality"] == str(qdir) and s["quality_reused"] and os.stat(scores).st_mtime_ns == stamp
    assert s["sets"]["seed"] == 10
    ind = pq.read_table(out / "indicators.parquet").to_pydict()
    q = pq.read_table(scores).to_pydict()
    assert q["id"] == ind["id"] and q["score"] == pytest.approx(ind["reward"], abs=0)
    short = run_selector("mods", load_selector_config("mods", None, {**base, "out": str(demo["root"] / "mods_q")},
                                                      {**sets, "field_max_tokens": 4}))
    assert not short["quality_reused"]
    records = [r.to_dict() for r in read_records(demo["pool"]).records]
    ref = Quality(None, str(tiny_model_dir), 8, 4, False).score([record_parts(r["messages"]) for r in records])
    np.testing.assert_allclose(pq.read_table(scores).column("score").to_numpy(), ref, atol=1e-5)
    assert not np.allclose(ref, ind["reward"], atol=1e-3)  # the cut changed the ratings: it was rescored
