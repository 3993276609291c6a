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
