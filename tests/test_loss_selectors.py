"""The loss selectors end to end: Ray Data stats job -> score folder -> select.

Each example's score is recomputed here one example at a time (HF's own loss for perplexity and
learnability; autograd for GraNd; the batch-of-one core for EL2N, itself checked against
brute force in test_example_stats), and the selection must be the top floor(p*N) of it.
"""
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from less_ray.core.checkpoints import load_lora_checkpoint
from less_ray.core.example_stats import ExampleStatsComputer
from less_ray.core.formatting import FormatConfig, collate, tokenize_records
from less_ray.data.demo import generate_pool
from less_ray.data.io import write_jsonl
from less_ray.data.schema import Record
from less_ray.selectors import run_selector
from less_ray.selectors.loss_stats import UNSCORED, LossStatsConfig
from less_ray.testing.fake_checkpoint import make_lora_checkpoint

MAX_LEN = 64


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loss_sel")
    long_prompt = " ".join(["word"] * 200)  # all assistant tokens truncated away at MAX_LEN
    pool = generate_pool(30, seed=5) + [Record("too-long", "demo/long", (
        {"role": "user", "content": long_prompt}, {"role": "assistant", "content": "yes"}))]
    write_jsonl(pool, tmp / "pool.jsonl")
    ckpt = make_lora_checkpoint(tiny_model_dir, tmp / "ckpt", seed=2)
    return {"tmp": tmp, "pool": pool, "pool_path": str(tmp / "pool.jsonl"), "ckpt": str(ckpt),
            "base": str(tiny_model_dir)}


@pytest.fixture(scope="module")
def reference(setup, tiny_tokenizer):
    """Per id: loss_base, loss_ckpt, el2n_ckpt, grand — one unpadded example at a time."""
    model, _ = load_lora_checkpoint(setup["base"], setup["ckpt"])
    comp = ExampleStatsComputer(model)
    kept, skipped = tokenize_records(setup["pool"], tiny_tokenizer,
                                     FormatConfig(LossStatsConfig.chat_format, MAX_LEN))  # the stage's default
    assert [s.id for s in skipped] == ["too-long"]
    params = [p for p in model.parameters() if p.requires_grad]
    ref = {}
    for ex in kept:
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        with torch.no_grad(), model.disable_adapter():
            base = model(input_ids=ids, labels=labels).loss.item()
        loss = model(input_ids=ids, labels=labels).loss
        g = torch.autograd.grad(loss, params)
        ref[ex.id] = {"loss_base": base, "loss_ckpt": loss.item(),
                      "el2n": comp.forward_stats(collate([ex], 0))["el2n"].item(),
                      "grand": math.sqrt(sum(float((x.double() ** 2).sum()) for x in g))}
    return ref


def _cfg(setup, name, **kw):
    return LossStatsConfig(pool=setup["pool_path"], out=str(setup["tmp"] / name), checkpoint=setup["ckpt"],
                           max_seq_length=MAX_LEN, shard_rows=12,
                           batch_size=5, top_p=0.2, max_actors=1, num_cpus=2, **kw)


def _check(setup, name, summary, expected: dict[str, float]):
    out = setup["tmp"] / name
    t = pq.read_table(out / "all" / "scores.parquet").to_pydict()
    got = dict(zip(t["id"], t["score"]))
    assert set(got) == {r.id for r in setup["pool"]}  # every pool row, in the folder once
    assert got["too-long"] == pytest.approx(UNSCORED)
    assert [json.loads(x)["id"] for x in (out / "skipped.jsonl").read_text().splitlines()] == ["too-long"]
    for rid, want in expected.items():
        assert got[rid] == pytest.approx(want, rel=1e-4, abs=1e-5), rid
    # select: the top floor(0.2 * 31) = 6 of the reference scores, best first. Compared by the
    # reference score at each rank: two examples the reference ties (perplexity "mid": the two
    # losses either side of an even count's median are equally far from it) may come in either
    # order once computed in float32 on another CPU, and either is the right pick.
    k = math.floor(0.2 * len(setup["pool"]))
    want = sorted(expected.values(), reverse=True)[:k]
    sel = [json.loads(x) for x in (out / "all" / "top_p0.2.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in sel}) == k
    assert [expected[r["id"]] for r in sel] == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert summary["select"]["all"]["selected"] == k
    from less_ray.selection.report import ReportConfig, run_report  # the report renders for every selector
    page = run_report(ReportConfig(scores=str(out), top_p=0.2)).read_text()
    assert summary["selector"] in page and "top_p0.2.jsonl" in page
    return got


def test_loss_selectors_round_trip(setup, reference):
    from less_ray.selectors.loss_stats import compute_stats
    ref = reference
    # one Ray job; the selectors below (sibling folders) share its default stats folder
    stats = compute_stats(_cfg(setup, "prefetch"), ["base", "grad"]).folder
    assert stats.parent == setup["tmp"] / "_loss_stats"
    s = run_selector("learnability", _cfg(setup, "learnability"))
    _check(setup, "learnability", s, {i: r["loss_base"] - r["loss_ckpt"] for i, r in ref.items()})
    s = run_selector("el2n", _cfg(setup, "el2n"))  # reuses the stats folder's ckpt pass
    _check(setup, "el2n", s, {i: r["el2n"] for i, r in ref.items()})
    s = run_selector("grand", _cfg(setup, "grand"))
    _check(setup, "grand", s, {i: r["grand"] for i, r in ref.items()})
    for keep in ("mid", "low", "high"):
        s = run_selector("perplexity", _cfg(setup, f"ppl_{keep}", perplexity_keep=keep))
        losses = np.array([r["loss_base"] for r in ref.values()])
        med = float(np.median(losses))
        fn = {"mid": lambda x: -abs(x - med), "low": lambda x: -x, "high": lambda x: x}[keep]
        _check(setup, f"ppl_{keep}", s, {i: fn(r["loss_base"]) for i, r in ref.items()})
        assert s["stats"] == str(stats) and s["passes"] == ["base"] and s["stats_jobs"] == []  # nothing recomputed
        if keep == "mid":
            assert s["median_loss"] == pytest.approx(med, rel=1e-5)


def test_grand_from_store_norms(setup, tmp_path):
    """GraNd read from a datastore's norm column: scores are those norms, the source recorded."""
    from less_ray.store import Projection, StoreManifest, features_table, write_manifest, write_shard
    ids = [r.id for r in setup["pool"]]
    norms = np.linspace(3.0, 0.5, len(ids))
    feats = np.eye(len(ids), 4, dtype=np.float32)
    entry = write_shard(tmp_path / "store", 0, features_table(ids, [r.source for r in setup["pool"]], feats, norms,
                                                              np.ones(len(ids)), np.zeros(len(ids)), "float32"))
    write_manifest(tmp_path / "store", StoreManifest(kind="sgd", checkpoint="c", checkpoint_hash="h", model="m",
                                                     projection=Projection("rademacher", 0, 4), normalized=True,
                                                     dtype="float32", count=len(ids), shards=[entry]))
    cfg = LossStatsConfig(pool=setup["pool_path"], out=str(tmp_path / "out"), grand_store=str(tmp_path / "store"),
                          top_p=0.1)
    s = run_selector("grand", cfg)
    got = pq.read_table(tmp_path / "out" / "all" / "scores.parquet").to_pydict()
    assert got["id"] == ids and np.allclose(got["score"], norms)
    assert "JL estimate" in s["grand_source"]
    sel = [json.loads(x)["id"] for x in (tmp_path / "out" / "all" / "top_p0.1.jsonl").read_text().splitlines()]
    assert sel == ids[:3]  # the three largest norms


def test_perplexity_on_the_base_model_alone_needs_no_checkpoint(setup, reference):
    """base_model only (no warmup checkpoint): the base pass runs on the plain model and gives
    the same losses as the adapter-off pass of a checkpoint."""
    cfg = LossStatsConfig(pool=setup["pool_path"], out=str(setup["tmp"] / "ppl_base_only"), base_model=setup["base"],
                          stats=str(setup["tmp"] / "stats_base_only"), max_seq_length=MAX_LEN, shard_rows=12,
                          batch_size=5, top_p=0.2, max_actors=1, num_cpus=2, perplexity_keep="low")
    s = run_selector("perplexity", cfg)
    _check(setup, "ppl_base_only", s, {i: -r["loss_base"] for i, r in reference.items()})
