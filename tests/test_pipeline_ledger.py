"""The pipeline's stage ledger: skip a stage whose artifact exists with the same config hash."""
from dataclasses import dataclass

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
