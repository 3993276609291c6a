"""The gradient datastore on Ray Data against brute-force per-example autograd, and resumption."""
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from less_ray.data.demo import generate_pool
from less_ray.data.io import write_jsonl
from less_ray.extract.job import ExtractConfig, run_extract
from less_ray.store import read_manifest, read_store
from less_ray.testing.fake_checkpoint import make_lora_checkpoint


@pytest.fixture(scope="module")
def ray_local():
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # never join another Ray on this machine
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tiny_model_dir, tmp_path_factory):
    return make_lora_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt"), r=4)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    pool = generate_pool(60, seed=5)
    assert any(len(r.messages) > 3 for r in pool) and any(r.messages[0]["role"] == "system" for r in pool)
    path = tmp_path_factory.mktemp("data") / "pool.jsonl"
    write_jsonl(pool, path)
    return pool, path


def brute_force(tiny_model_dir, ckpt, recs, kind):
    """One example at a time, no padding, plain autograd, LESS's formulas written out."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from less_ray.core.formatting import FormatConfig, tokenize_messages
    from less_ray.models import load_model_and_tokenizer
    base, tok = load_model_and_tokenizer(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(ckpt), is_trainable=True).eval()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    moments = load_file(str(ckpt / "optimizer_moments.safetensors"))
    out = []
    for r in recs:
        ex = tokenize_messages(r.messages, tok, FormatConfig(ExtractConfig.chat_format))  # the stage's default
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        logits = model(input_ids=ids).logits[0, :-1]
        tgt = labels[0, 1:]
        keep = tgt != -100
        loss = torch.nn.functional.cross_entropy(logits[keep], tgt[keep])  # mean over its label tokens
        grads = torch.autograd.grad(loss, [p for _, p in params])
        g = torch.cat([x.reshape(-1) for x in grads]).double()
        if kind == "adam":
            m = torch.cat([moments[f"{n}.exp_avg"].reshape(-1) for n, _ in params]).double()
            v = torch.cat([moments[f"{n}.exp_avg_sq"].reshape(-1) for n, _ in params]).double()
            m2, v2 = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            g = m2 / torch.sqrt(v2 + 1e-8)
        out.append((g / g.norm()).numpy())
    return np.stack(out)


@pytest.mark.parametrize("kind, batch_tokens", [("adam", None), ("sgd", 200)])
def test_identity_store_equals_brute_force(ray_local, tiny_model_dir, ckpt, records, tmp_path, kind, batch_tokens):
    # batch_tokens: batches also cut at 200 padded tokens (2 to 6 rows here instead of 7)
    pool, path = records
    stores = run_extract(ExtractConfig(data=str(path), checkpoint=str(ckpt), out=str(tmp_path), kind=kind,
                                       projection="identity", dtype="float32", batch_size=7, shard_rows=25,
                                       precision="fp32",  # the reference is fp32; auto may pick bf16 here
                                       batch_tokens=batch_tokens, max_actors=2, actor_num_cpus=0.5))
    (store,) = stores.values()
    got = read_store(store, ("id", "features", "n_tokens", "loss"))
    assert list(got["id"]) == [r.id for r in pool]  # input order, across shards
    want = brute_force(tiny_model_dir, ckpt, pool, kind)
    rel = np.linalg.norm(got["features"] - want, axis=1) / np.linalg.norm(want, axis=1)
    assert rel.max() <= 1e-4, rel.max()
    man = read_manifest(store)
    assert (man.kind, man.count, man.projection.type, man.normalized) == (kind, 60, "identity", True)
    assert man.avg_lr == 2e-5 and man.input["path"] == str(path) and len(man.shards) == 3
    assert all(np.isfinite(got["loss"])) and (got["n_tokens"] > 0).all()


def test_projected_store_several_dims_plain_arrow(ray_local, ckpt, records, tmp_path):
    _, path = records
    stores = run_extract(ExtractConfig(data=str(path), checkpoint=str(ckpt), out=str(tmp_path), kind="sgd",
                                       dims=[64, 16], seed=3, shard_rows=30, actor_num_cpus=0.5))
    assert sorted(stores) == [16, 64]
    t = pa.ipc.open_file(stores[64] / "shards" / "part-00000.arrow").read_all()
    ftype = t.schema.field("features").type
    assert pa.types.is_fixed_size_list(ftype) and ftype.list_size == 64 and ftype.value_type == pa.float16()
    f = read_store(stores[16])["features"]
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=2e-3)
    assert read_manifest(stores[16]).projection.seed == 3


def _dying_extractor(marker, shard: int):
    """The stage's actor, except that the first actor to take `shard` dies there (once: `marker`).
    Defined here, so Ray ships it by value; production code carries no kill switch."""
    import os

    from less_ray.extract import job

    class Dying(job.ShardExtractor):
        def __call__(self, batch):
            if shard in [int(s) for s in batch["shard"]] and not marker.exists():
                marker.write_text("died")
                os._exit(1)
            return super().__call__(batch)
    return Dying


def test_killed_actor_then_resume_equals_uninterrupted(ray_local, ckpt, records, tmp_path, monkeypatch):
    from less_ray.extract import job
    _, path = records
    kw = dict(data=str(path), checkpoint=str(ckpt), kind="adam", dims=[32], shard_rows=10, batch_size=4,
              max_actors=2, actor_num_cpus=0.5)
    clean = run_extract(ExtractConfig(out=str(tmp_path / "clean"), **kw))[32]
    marker = tmp_path / "died"
    with monkeypatch.context() as m:
        m.setattr(job, "ShardExtractor", _dying_extractor(marker, 3))
        try:
            run_extract(ExtractConfig(out=str(tmp_path / "hurt"), **kw))
        except Exception:
            pass  # Ray may retry the dead actor's shard itself, or give up: either way, rerun
    assert marker.exists()  # the actor really died
    hurt = run_extract(ExtractConfig(out=str(tmp_path / "hurt"), **kw))[32]
    a, b = read_store(clean, ("id", "features", "norm")), read_store(hurt, ("id", "features", "norm"))
    assert list(a["id"]) == list(b["id"]) and len(set(b["id"])) == 60
    np.testing.assert_array_equal(a["features"], b["features"])
    assert not list((hurt / "shards").glob(".tmp-*"))
    assert json.loads((hurt / "manifest.json").read_text())["count"] == 60


@pytest.fixture(scope="module")
def ckpt_b(tiny_model_dir, tmp_path_factory):
    return make_lora_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ckpt_b"), r=4, seed=1)


@pytest.mark.parametrize("change", ["seed", "checkpoint", "data", "max_seq_length"])
def test_a_rerun_with_other_inputs_into_a_used_folder_equals_a_fresh_run(ray_local, ckpt, ckpt_b, records, tmp_path,
                                                                       change, less_ray_log, monkeypatch):
    """Issue #16: shards were reused on input hash + shard_rows alone, and the manifest then
    claimed the new checkpoint / seed over the old features."""
    from less_ray.extract import job
    pool, path = records
    kw = dict(data=str(path), checkpoint=str(ckpt), kind="adam", dims=[32], seed=0, shard_rows=20, batch_size=8,
              max_actors=1, actor_num_cpus=1)
    run_extract(ExtractConfig(out=str(tmp_path / "used"), **kw))
    other = {"seed": {"seed": 5}, "checkpoint": {"checkpoint": str(ckpt_b)}, "max_seq_length": {"max_seq_length": 40},
             "data": {"data": str(tmp_path / "pool2.jsonl")}}[change]
    write_jsonl(list(reversed(pool)), tmp_path / "pool2.jsonl")  # the same ids, another order
    kw2 = {**kw, **other}
    fresh = run_extract(ExtractConfig(out=str(tmp_path / "fresh"), **kw2))[32]
    want = read_store(fresh, ("id", "features"))
    # a rerun killed before it finishes must not leave the old features under any manifest
    with monkeypatch.context() as m:
        m.setattr(job, "ShardExtractor", _dying_extractor(tmp_path / "died", 0))
        try:
            run_extract(ExtractConfig(out=str(tmp_path / "used"), **kw2))
        except Exception:
            pass
    assert (tmp_path / "died").exists()
    man = tmp_path / "used" / "dim32" / "manifest.json"
    if man.exists():  # Ray retried the shard on another actor and finished: then it is the new store
        np.testing.assert_array_equal(read_store(man.parent, ("features",))["features"], want["features"])
    key = {"seed": "seed 0 -> 5", "checkpoint": "checkpoint ", "max_seq_length": "max_seq_length 2048 -> 40",
           "data": "input_sha256 "}[change]
    assert "was made from other inputs" in less_ray_log.text and key in less_ray_log.text, less_ray_log.text
    used = run_extract(ExtractConfig(out=str(tmp_path / "used"), **kw2))[32]
    got = read_store(used, ("id", "features"))
    assert list(got["id"]) == list(want["id"])
    np.testing.assert_array_equal(got["features"], want["features"])
    if change == "seed":
        assert read_manifest(used).projection.seed == 5


def test_append_extracts_only_the_new_records_and_scores_as_a_fresh_store(ray_local, ckpt, records, tmp_path):
    """Issue #16: a growing pool. `append` adds a file's records to a finished store as new shards
    (the old shard files are not touched); features, scores and the selection equal those of a store
    extracted from scratch; ids already in the store, or other settings, are refused."""
    from less_ray.scoring.job import ScoreConfig, TaskSpec, run_score
    from less_ray.selection.select import SelectConfig, run_select
    pool, _ = records
    write_jsonl(pool[:40], tmp_path / "a.jsonl")
    write_jsonl(pool[40:], tmp_path / "b.jsonl")
    write_jsonl(pool, tmp_path / "ab.jsonl")
    write_jsonl(generate_pool(6, seed=9), tmp_path / "t.jsonl")
    kw = dict(checkpoint=str(ckpt), kind="adam", dims=[32], shard_rows=10, batch_size=5, max_actors=1, actor_num_cpus=1)
    grown = run_extract(ExtractConfig(data=str(tmp_path / "a.jsonl"), out=str(tmp_path / "grown"), **kw))[32]
    before = {f.name: f.stat().st_mtime_ns for f in (grown / "shards").iterdir()}
    run_extract(ExtractConfig(data=str(tmp_path / "b.jsonl"), out=str(tmp_path / "grown"), append=True, **kw))
    after = {f.name: f.stat().st_mtime_ns for f in (grown / "shards").iterdir()}
    assert all(after[n] == t for n, t in before.items()) and len(after) > len(before)  # only new shards
    fresh = run_extract(ExtractConfig(data=str(tmp_path / "ab.jsonl"), out=str(tmp_path / "fresh"), **kw))[32]
    a, b = read_store(grown, ("id", "features")), read_store(fresh, ("id", "features"))
    assert list(a["id"]) == list(b["id"]) == [r.id for r in pool]
    np.testing.assert_array_equal(a["features"], b["features"])
    man = read_manifest(grown)
    assert man.count == 60 and [x["path"] for x in man.input["appended"]] == [str(tmp_path / "b.jsonl")]

    target = run_extract(ExtractConfig(data=str(tmp_path / "t.jsonl"), out=str(tmp_path / "t"), **{**kw, "kind": "sgd"}))[32]
    picked = {}
    for name, store in (("grown", grown), ("fresh", fresh)):
        run_score(ScoreConfig(pool_stores=[str(store)], tasks=[TaskSpec("t", [str(target)])],
                              out=str(tmp_path / f"scores_{name}"), max_actors=1))
        res = run_select(SelectConfig(scores=str(tmp_path / f"scores_{name}"), top_n=6, top_p=None, sorted_csv=False))
        picked[name] = [json.loads(x) for x in open(res["t"]["file"])]  # the pool files come from the manifest
    assert [r["id"] for r in picked["grown"]] == [r["id"] for r in picked["fresh"]]
    assert [r["score"] for r in picked["grown"]] == [r["score"] for r in picked["fresh"]]

    write_jsonl([pool[0], generate_pool(70, seed=5)[65]], tmp_path / "dup.jsonl")
    with pytest.raises(ValueError, match=r"1 id\(s\) are in the store already"):
        run_extract(ExtractConfig(data=str(tmp_path / "dup.jsonl"), out=str(tmp_path / "grown"), append=True, **kw))
    write_jsonl(generate_pool(70, seed=5)[60:], tmp_path / "c.jsonl")
    with pytest.raises(ValueError, match="was made from other inputs .*seed 0 -> 5"):
        run_extract(ExtractConfig(data=str(tmp_path / "c.jsonl"), out=str(tmp_path / "grown"), append=True,
                                  **{**kw, "seed": 5}))
    assert read_manifest(grown).count == 60  # the refused appends left the store as it was
    with pytest.raises(ValueError, match="no finished store to append to"):
        run_extract(ExtractConfig(data=str(tmp_path / "c.jsonl"), out=str(tmp_path / "empty"), append=True, **kw))


def test_an_extractor_uses_the_cores_ray_granted_it(tiny_model_dir, tmp_path):
    """An actor given actor_num_cpus cores runs torch on that many threads (Ray's default
    OMP_NUM_THREADS=1 would leave the other cores of a multi-core actor idle)."""
    from less_ray.extract.job import ShardExtractor
    ckpt = make_lora_checkpoint(tiny_model_dir, tmp_path / "ckpt", r=4)
    before = torch.get_num_threads()
    try:
        for cores in (2, 1):
            cfg = ExtractConfig(data=str(tmp_path / "pool.jsonl"), checkpoint=str(ckpt), out=str(tmp_path / "s"),
                                base_model=str(tiny_model_dir), dims=[16], kind="sgd", actor_num_cpus=cores)
            ShardExtractor(cfg, [])
            assert torch.get_num_threads() == cores
    finally:
        torch.set_num_threads(before)


def test_embedding_from_the_same_pass_is_rds_plus_of_the_checkpoint_and_feeds_rds_plus(ray_local, tiny_model_dir,
                                                                                     ckpt, records, tmp_path):
    """extract's embedding store: per example the checkpoint model's hidden_states[-1] alone (no
    padding), position-weighted, normalised (RDS+'s code path); pool and targets from two
    extractions feed rds_plus, whose selection is RDS+'s round robin over them."""
    from peft import PeftModel

    from less_ray.core.formatting import FormatConfig, tokenize_messages
    from less_ray.extract.job import embedding_dir
    from less_ray.models import load_model_and_tokenizer
    from less_ray.selectors import load_selector_config, run_selector
    from round_robin_reference import rds_plus_picks
    pool, path = records
    common = dict(checkpoint=str(ckpt), dims=[16], shard_rows=25, precision="fp32", embedding="weighted_mean",
                  max_actors=2, actor_num_cpus=0.5)
    run_extract(ExtractConfig(data=str(path), out=str(tmp_path / "pool"), kind="adam", **common))
    tgt_recs = [r.__class__(**{**r.__dict__, "task": "t", "subtask": f"s{i % 2}"}) for i, r in enumerate(pool[:6])]
    tpath = tmp_path / "targets.jsonl"
    write_jsonl(tgt_recs, tpath)
    run_extract(ExtractConfig(data=str(tpath), out=str(tmp_path / "tgt"), kind="sgd", **common))
    store = embedding_dir(tmp_path / "pool")
    man = read_manifest(store)
    assert (man.kind, man.count, man.projection.type, man.normalized, man.dtype) == ("embedding", 60, "identity",
                                                                                     True, "float32")
    got = read_store(store, ("id", "features"))
    assert list(got["id"]) == [r.id for r in pool]
    base, tok = load_model_and_tokenizer(tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(ckpt)).eval()
    for i, r in enumerate(pool[:12]):
        ex = tokenize_messages(r.messages, tok, FormatConfig(ExtractConfig.chat_format))
        ids = torch.tensor([ex.input_ids])
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        w = torch.arange(h.size(1)).unsqueeze(0) + 1
        e = torch.sum(h * (w / w.sum(dim=1, keepdim=True)).unsqueeze(-1), dim=1)[0]
        np.testing.assert_allclose(got["features"][i], (e / e.norm()).numpy(), atol=2e-5)
    # a rerun finds every store done (the embedding store included)
    from less_ray.extract.job import input_parts, pending_shards, resolve, shard_keys, embedding_key
    cfg = resolve(ExtractConfig(data=str(path), out=str(tmp_path / "pool"), kind="adam", **common))
    parts = input_parts(cfg, tmp_path / "pool", [16])
    assert pending_shards(cfg, shard_keys(cfg, [16], parts), parts, embedding_key(cfg, parts)) == []
    out = tmp_path / "rdsp"
    s = run_selector("rds_plus", load_selector_config("rds_plus", None, {
        "pool": str(path), "targets": {"t": str(tpath)}, "out": str(out), "top_p": 0.1,
        "pool_embeddings": str(store), "target_embeddings": {"t": str(embedding_dir(tmp_path / "tgt"))}}))
    assert s["encoder"]["encoder"] == "extract" and s["encoder"]["pooling"] == "weighted_mean"
    tf = read_store(embedding_dir(tmp_path / "tgt"), ("features",))["features"]
    sims = got["features"] @ tf.T
    want = [got["id"][i] for i in rds_plus_picks([sims[:, j] for j in range(sims.shape[1])], 6)]
    sel = [json.loads(x)["id"] for x in (out / "t" / "top_p0.1.jsonl").read_text().splitlines()]
    assert sorted(sel) == sorted(want)
