"""One config per stage (issue #16): every field of every stage config reaches the command line
(`--set`) and, through the pipeline's generated sections, the stage config the pipeline builds.
The tests walk the dataclasses, so a field added to a stage is covered without a new test."""
import dataclasses
import typing
from pathlib import Path

import pytest

from less_ray.cli import main, stage_config_class
from less_ray.stages import CONFIGURED
from less_ray.config import ConfigError, load_config, parse_sets
from less_ray.pipeline import PipelineConfig, Run

REQUIRED = {"pool": "pool.jsonl", "out": "out", "base_model": "model", "data": "data.jsonl"}


def leaves(cls, prefix=""):
    """(dotted key, type, default, field) of every leaf field, nested configs walked."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from leaves(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        yield f"{prefix}{f.name}", tp, default, f


def other_value(tp, default):
    """A value of type `tp` that differs from `default` (None where no such value is made here)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        for a in args:
            if a is not type(None):
                v = other_value(a, default if isinstance(default, a if isinstance(a, type) else object) else None)
                if v is not None:
                    return v
        return None
    if origin is typing.Literal:
        return next((a for a in args if a != default), None)
    if tp is bool:
        return not default
    if tp is int:
        return (default or 0) + 3
    if tp is float:
        return round((default or 0.0) + 0.125, 6)
    if tp is str:
        return "zz-other"
    if origin is list and args and args[0] is int:
        return [48]
    if origin is list and args and args[0] is str:
        return ["zz-a", "zz-b"]
    if origin is list and args and args[0] is float:
        return [0.25, 0.75]
    if origin is tuple and args == (float, float):
        return [0.5, 0.25]
    if origin is dict and args == (str, str):
        return {"zz": "zz-file"}
    if origin is dict and args and typing.get_origin(args[1]) is list:
        return {"zz": ["zz-task"]}
    return None


def settable(cls):
    for key, tp, default, f in leaves(cls):
        if "path" in f.metadata:  # made absolute on load; checked separately
            continue
        value = other_value(tp, default)
        if value is not None:
            yield key, value


def get(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return list(cfg) if isinstance(cfg, tuple) else cfg


@pytest.mark.parametrize("stage", sorted(CONFIGURED))
def test_every_field_of_every_stage_reaches_set(stage):
    cls = stage_config_class(stage)
    pairs = list(settable(cls))
    # recode's only non-path field is dtype; every other stage has several
    assert len(pairs) >= (1 if stage == "recode" else 3), f"{stage}: {pairs}"
    required = {f.name: REQUIRED[f.name] for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    for key, value in pairs:
        text = f"{key}={__import__('json').dumps(value)}"
        cfg = load_config(cls, None, required, parse_sets([text]))
        assert get(cfg, key) == value, (stage, text)


def test_set_reaches_a_stage_from_the_command_line(tmp_path, capsys):
    assert main(["config", "extract", "--set", "projection=sjlt", "--set", "dims=[64, 32]", "--set", "seed=5"]) == 0
    out = capsys.readouterr().out
    assert "projection: sjlt" in out and "- 64" in out and "seed: 5" in out
    assert main(["config", "pipeline", "--set", "warmup.optim.lr=1e-3", "--set", "eval.tasks={t: [loss:t]}"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.001" in out and "loss:t" in out
    assert main(["config", "extract"]) == 0  # the generated reference: every field, with its comment
    ref = capsys.readouterr().out
    assert "projection_buffer_gb: float = 4.0" in ref and "seed: int = 0  # projection seed" in ref
    for bad, why in (("score.top_p=0.1", "moved to select.top_p"), ("extract.dim=64", "moved to extract.dims"),
                     ("extract.data=x", "the pipeline fills this in"), ("train.model=m", "moved to train.base_model"),
                     ("warmup.optim.lr=fast", "expected float"), ("warmup.optim.lrr=1", "did you mean 'lr'")):
        assert main(["config", "pipeline", "--set", bad]) == 1
        assert why in capsys.readouterr().err, bad


SECTIONS = ("warmup", "extract", "score", "select", "train", "eval", "report")


def test_sections_are_their_stage_configs_less_the_filled_fields():
    for name in SECTIONS:
        sec = typing.get_type_hints(PipelineConfig)[name]
        stage_fields = {f.name for f in dataclasses.fields(sec.stage) if f.init}
        own = set(sec.own)
        assert {f.name for f in dataclasses.fields(sec)} - own == stage_fields - set(sec.filled), name
        assert set(sec.filled) <= stage_fields, name


def _built(cfg: PipelineConfig, run: Run, name: str):
    from less_ray import pipeline as p
    return {
        "warmup": lambda: p.warmup_config(cfg, run),
        "extract": lambda: p.extract_config(cfg, "ckpt", "data.jsonl", run.root / "x", "adam"),
        "score": lambda: p.score_config(cfg, ["s"], {"t": ["s"]}, run.root / "scores"),
        "select": lambda: p.select_config(cfg, run.root / "scores"),
        "train": lambda: p.train_config(cfg, run, "t", run.root / "sel.jsonl"),
        "eval": lambda: p.eval_config(cfg, "m", "b", ["loss:t"], {}, run.root / "e.json"),
        "report": lambda: p.report_config(cfg, run.root / "scores", run.root / "r.html"),
    }[name]()


@pytest.mark.parametrize("name", SECTIONS)
def test_every_section_field_reaches_the_stage_config_the_pipeline_builds(name, tmp_path):
    sec = typing.get_type_hints(PipelineConfig)[name]
    pairs = [(k, v) for k, v in settable(sec) if k.split(".")[0] not in sec.own]
    assert pairs
    base = {"out": str(tmp_path / "run"), "base_model": str(tmp_path), "pool": "pool.jsonl", "targets": {"t": "t.jsonl"}}
    for key, value in pairs:
        cfg = load_config(PipelineConfig, None, base, parse_sets([f"{name}.{key}={__import__('json').dumps(value)}"]))
        built = _built(cfg, Run(cfg), name)
        assert type(built) is sec.stage
        assert get(built, key) == value, (name, key)


def test_the_pipeline_fills_its_fields_and_a_saved_config_replays(tmp_path):
    from less_ray.config import save_config
    cfg = load_config(PipelineConfig, None, {"out": str(tmp_path / "run"), "base_model": str(tmp_path),
                                             "pool": "pool.jsonl", "targets": {"t": "t.jsonl"}, "seed": 7},
                      parse_sets(["train.base_model=" + str(tmp_path / "other"), "select.top_p=0.2"]))
    run = Run(cfg)
    w, t, r = _built(cfg, run, "warmup"), _built(cfg, run, "train"), _built(cfg, run, "report")
    assert (w.seed, w.base_model, w.out) == (7, str(tmp_path), str(run.root / "warmup"))
    assert t.base_model == str(tmp_path / "other")  # LESS-T: another base model for the target
    assert r.top_p == 0.2
    saved = save_config(cfg, tmp_path / "pipeline.config.yaml")
    assert load_config(PipelineConfig, saved) == cfg
    with pytest.raises(ConfigError, match="extract.checkpoint: the pipeline fills this in"):
        load_config(PipelineConfig, None, None, parse_sets(["extract.checkpoint=x"]))
    assert "\n  checkpoint:" not in Path(saved).read_text() and "\n  data:" not in Path(saved).read_text()
