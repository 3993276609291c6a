"""The pipeline's stage ledger: skip a stage whose artifact exists with the same config hash."""
import json
from dataclasses import dataclass

import pytest

from less_ray.config import path_field
from less_ray.pipeline import PipelineConfig, Run


@dataclass
class StageCfg:
    x: int = 1


def test_stage_is_skipped_only_when_artifact_and_config_match(tmp_path):
    run = Run(PipelineConfig(out=str(tmp_path / "run")))
    artifact = tmp_path / "run" / "artifact.txt"
    calls = []

    def work(tag):
        def fn():
            calls.append(tag)
            artifact.write_text(tag)
            return {"tag": tag}
        return fn

    assert run.stage("s", StageCfg(1), artifact, work("a")) == {"tag": "a"}
    assert run.stage("s", StageCfg(1), artifact, work("b")) == {"tag": "a"}  # up to date: skipped
    assert calls == ["a"]
    run.stage("s", StageCfg(2), artifact, work("c"))  # config changed: rerun
    artifact.unlink()
    Run(PipelineConfig(out=str(tmp_path / "run"))).stage("s", StageCfg(2), artifact, work("d"))  # artifact gone
    assert calls == ["a", "c", "d"]
    # an interrupted stage is recorded as running, and runs again (resuming in its folder) next time
    def boom():
        raise RuntimeError("killed")
    try:
        run.stage("t", StageCfg(1), artifact, boom)
    except RuntimeError:
        pass
    assert Run(PipelineConfig(out=str(tmp_path / "run"))).ledger["t"]["state"] == "running"
    Run(PipelineConfig(out=str(tmp_path / "run"))).stage("t", StageCfg(1), artifact, work("e"))
    assert calls == ["a", "c", "d", "e"]


@dataclass
class ReadsFile:
    data: str = path_field("in", "")
    out: str = path_field("out", "")


def test_a_stage_reruns_when_its_input_content_changes_and_clears_its_folder(tmp_path):
    """Same config (same paths), another content: a warmup rerun rewrites epoch_1/ in place."""
    run = Run(PipelineConfig(out=str(tmp_path / "run")))
    data, folder = tmp_path / "in.jsonl", tmp_path / "run" / "stage_out"
    data.write_text("one\n")
    calls = []

    def work():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"shard{len(calls)}").write_text(data.read_text())  # what a resumable stage leaves behind
        (folder / "done").write_text("ok")
        calls.append(data.read_text())

    cfg = ReadsFile(str(data), str(folder))
    run.stage("s", cfg, folder / "done", work, folder=folder)
    run.stage("s", cfg, folder / "done", work, folder=folder)  # same content: skipped
    data.write_text("two\n")
    run.stage("s", cfg, folder / "done", work, folder=folder)  # content changed: reruns, from a clean folder
    assert calls == ["one\n", "two\n"]
    assert sorted(p.name for p in folder.iterdir()) == ["done", "shard1"]  # shard0 (old content) is gone
    entry = Run(PipelineConfig(out=str(tmp_path / "run"))).ledger["s"]
    assert entry["state"] == "done" and set(entry["inputs"]) == {"data"}


def test_fingerprints_follow_content_not_paths(tmp_path, tiny_model_dir):
    import shutil

    from less_ray.fingerprint import content_fingerprint
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    a = make_lora_checkpoint(tiny_model_dir, tmp_path / "a", r=4)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert content_fingerprint(a) == content_fingerprint(b)  # a copied checkpoint is the same input
    c = make_lora_checkpoint(tiny_model_dir, tmp_path / "c", r=4, seed=1)
    assert content_fingerprint(c) != content_fingerprint(a)
    shutil.rmtree(a)
    shutil.copytree(c, a)  # another checkpoint written to the same path
    assert content_fingerprint(a) == content_fingerprint(c)
    assert content_fingerprint(tmp_path / "nope") == "missing"


def test_selector_configs_get_the_warmup_checkpoint_they_want(tmp_path):
    # EL2N and GraNd score early in training: the first epoch's checkpoint; the others the last;
    # a checkpoint given in the selector's options wins
    from less_ray.pipeline import selector_config
    cfg = PipelineConfig(out=str(tmp_path / "run"), base_model="m", pool="pool.jsonl",
                         selectors={"el2n": {}, "grand": {}, "learnability": {}, "perplexity": {"checkpoint": "mine"}})
    run, ckpts = Run(cfg), ["ep1", "ep2", "ep3"]
    got = {name: selector_config(cfg, run, name, ckpts).checkpoint for name in cfg.selectors}
    assert got == {"el2n": "ep1", "grand": "ep1", "learnability": "ep3", "perplexity": "mine"}
    assert selector_config(cfg, run, "el2n", []).checkpoint is None  # no warmup ran


def test_one_selector_run_several_times_under_labels(tmp_path):
    # random 5% with three seeds (issue #19): name@label keys, each its own folder and options
    from less_ray.pipeline import selector_config, selector_kind
    from less_ray.selectors import get_selector
    cfg = PipelineConfig(out=str(tmp_path / "run"), base_model="m", pool="pool.jsonl", seed=7,
                         selectors={"random": {}, "random@2": {"seed": 2}, "random@3": {"seed": 3}})
    run = Run(cfg)
    got = {name: selector_config(cfg, run, name, []) for name in cfg.selectors}
    assert {n: c.seed for n, c in got.items()} == {"random": 7, "random@2": 2, "random@3": 3}
    assert {n: c.out.rsplit("/", 1)[-1] for n, c in got.items()} == {"random": "random", "random@2": "random@2",
                                                           "random@3": "random@3"}
    assert all(isinstance(c, get_selector("random").config_cls) for c in got.values())
    with pytest.raises(ValueError, match="name@label"):
        selector_kind("random@")


def test_two_projection_dims_in_one_run_folder(tmp_path, tiny_model_dir):
    """Issue #16: a run folder with stores of two dims crashed, and a run with another dim cleared
    the other dim's stores. Warmup is stood in for by one made checkpoint."""
    from less_ray.data.demo import generate_pool, generate_targets
    from less_ray.data.io import write_jsonl
    from less_ray.pipeline import ExtractSection, PipelineConfig, run_pipeline
    from less_ray.store import read_manifest
    from less_ray.testing.fake_checkpoint import make_lora_checkpoint
    from less_ray.train.checkpoint import write_warmup_manifest
    run = tmp_path / "run"
    ck = make_lora_checkpoint(tiny_model_dir, run / "warmup" / "checkpoints" / "epoch_1", r=4)
    write_warmup_manifest(run / "warmup", [{"epoch": 1, "path": str(ck), "avg_lr": 2e-5}], {})
    write_jsonl(generate_pool(40, seed=1), tmp_path / "pool.jsonl")
    write_jsonl(generate_targets("arithmetic", 4, seed=2), tmp_path / "t.jsonl")

    def pipeline(dim):
        return run_pipeline(PipelineConfig(
            out=str(run), base_model=str(tiny_model_dir), pool=str(tmp_path / "pool.jsonl"),
            targets={"t": str(tmp_path / "t.jsonl")}, stages=["extract", "score", "select"],
            extract=ExtractSection(dims=[dim], shard_rows=40, max_actors=1)))

    pipeline(16)
    pool16 = run / "datastore" / "epoch_1" / "pool" / "dim16"
    made16 = (pool16 / "manifest.json").stat().st_mtime_ns
    pipeline(32)  # another dim into the same run folder: adds its stores, scores with them
    assert read_manifest(run / "datastore" / "epoch_1" / "pool" / "dim32").projection.dim == 32
    assert (pool16 / "manifest.json").stat().st_mtime_ns == made16  # the dim-16 stores are untouched
    scored = json.loads((run / "scores" / "manifests" / "pool_ckpt0.json").read_text())
    assert scored["projection"]["dim"] == 32
    pipeline(16)  # back to 16: its stores are reused, only score and select rerun
    assert (pool16 / "manifest.json").stat().st_mtime_ns == made16
    ledger = json.loads((run / "stages.json").read_text())
    assert {"extract/epoch_1/pool/dim16", "extract/epoch_1/pool/dim32", "extract/epoch_1/t/dim16"} <= set(ledger)
    assert json.loads((run / "scores" / "manifests" / "pool_ckpt0.json").read_text())["projection"]["dim"] == 16
