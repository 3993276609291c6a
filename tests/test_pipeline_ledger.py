"""The pipeline's stage ledger: skip a stage whose artifact exists with the same config hash."""
from dataclasses import dataclass

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
    # an interrupted stage (no ledger entry written) runs again on the next attempt
    def boom():
        raise RuntimeError("killed")
    try:
        run.stage("t", StageCfg(1), artifact, boom)
    except RuntimeError:
        pass
    assert "t" not in Run(PipelineConfig(out=str(tmp_path / "run"))).ledger


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
