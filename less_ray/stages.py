"""The stage registry: every stage declared once: its name, config class, run function, what it
writes, what it asks of Ray, and whether `less-ray pipeline` runs it (in this order).

The pipeline's stage list, the CLI's commands and help, `less-ray config`, preflight's check of
`stages:` and the plan all read it from here. Classes and functions are named as "module:attr"
and imported on use, so this module imports nothing of less_ray and every layer can read it
(a CLI call that needs one stage imports only that stage's module).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str
    config: str | None  # "module:Class", the stage's one config dataclass; None: it has none of its own
    run: str | None  # "module:function" taking that config; None: the pipeline composes it
    help: str  # one line for `less-ray --help`
    artifact: str  # what it writes
    resources: str  # what it asks of Ray
    pipeline: bool = False  # a step of `less-ray pipeline`
    command: str = ""  # its `less-ray` command line words, when not its name

    @property
    def cli(self) -> str:
        return self.command or self.name

    def config_class(self) -> type:
        if self.config is None:
            raise ValueError(f"stage {self.name!r} has no config of its own (the pipeline's `{self.name}:` section)")
        return _load(self.config)

    @property
    def summary(self) -> str:
        """The help line, with the pipeline's stage order filled in where it says {pipeline}."""
        return self.help.replace("{pipeline}", " -> ".join(PIPELINE_STAGES))

    def run_function(self) -> Callable[[Any], Any]:
        if self.run is None:
            raise ValueError(f"stage {self.name!r} has no run function of its own (the pipeline composes it)")
        return _load(self.run)


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


REGISTRY: tuple[Stage, ...] = (
    Stage("warmup", "less_ray.train.config:WarmupConfig", "less_ray.train.runner:run_warmup",
          "LESS step 1: LoRA warmup on a seeded p%% of the pool (Ray Train + DeepSpeed)",
          "a checkpoint per epoch (adapter, AdamW moments, mean lr) + warmup_manifest.json",
          "Ray Train workers (CPU or GPU)", pipeline=True),
    Stage("extract", "less_ray.extract.job:ExtractConfig", "less_ray.extract.job:run_extract",
          "LESS step 2: gradient features of one checkpoint -> datastore (Ray Data)",
          "a datastore per dim: Arrow shards + manifest.json", "Ray Data actors (memory declared)", pipeline=True),
    Stage("score", "less_ray.scoring.job:ScoreConfig", "less_ray.scoring.job:run_score",
          "influence of every pool example on each target task (Ray Data)",
          "a score folder: per-task scores + manifest", "Ray Data actors", pipeline=True),
    Stage("select", "less_ray.selection.select:SelectConfig", "less_ray.selection.select:run_select",
          "top p%% (or top n) per task: top_p*.jsonl, sorted.csv",
          "top_p*.jsonl + sorted.csv + selection manifest", "the driver", pipeline=True),
    Stage("selectors", None, None,
          "other selectors over the same pool (the pipeline's `selectors:`; alone: `less-ray selector NAME`)",
          "a score folder per selector", "each selector's own", pipeline=True, command="selector"),
    Stage("train", "less_ray.train.config:TrainConfig", "less_ray.train.runner:run_train",
          "train the target model on a selection (Ray Train + DeepSpeed)",
          "the trained adapter or model", "Ray Train workers (CPU or GPU)", pipeline=True),
    Stage("eval", "less_ray.eval.runner:EvalConfig", "less_ray.eval.runner:run_eval",
          "evaluate a model or adapter on BBH / MMLU / TydiQA / demo:<family>",
          "results JSON", "the driver", pipeline=True),
    Stage("report", "less_ray.selection.report:ReportConfig", "less_ray.selection.report:run_report",
          "one self-contained HTML page about the selection", "report.html", "the driver", pipeline=True),
    Stage("dedup", "less_ray.selectors.minhash:DedupConfig", "less_ray.selectors.minhash:run_dedup",
          "MinHash LSH near-duplicate filter of a pool (keep first): filtered pool + duplicates",
          "the filtered pool + duplicates file", "Ray Data actors"),
    Stage("recode", "less_ray.recode:RecodeConfig", "less_ray.recode:run_recode",
          "a datastore's features in another stored dtype (int8, int4, sign: 1 bit per value, float16, float32)",
          "a datastore", "Ray Data actors"),
    Stage("pipeline", "less_ray.pipeline:PipelineConfig", "less_ray.pipeline:run_pipeline",
          "{pipeline}",
          "a run folder holding every stage's artifact", "every stage's own"),
    Stage("plan", "less_ray.pipeline:PipelineConfig", None,
          "check a pipeline config and print the work per stage, before anything runs",
          "nothing (prints the plan)", "none"),
    Stage("demo", "less_ray.demo:DemoConfig", "less_ray.demo:run_demo",
          "the whole pipeline on built-in data and a tiny model", "a run folder", "an embedded Ray"),
    Stage("convert", "less_ray.data.convert:ConvertConfig", "less_ray.data.convert:run_convert",
          "adapters, target builders or files -> one schema JSONL/Parquet file", "one records file", "none",
          command="data convert"),
)
BY_NAME = {s.name: s for s in REGISTRY}
PIPELINE_STAGES = tuple(s.name for s in REGISTRY if s.pipeline)
CONFIGURED = tuple(s.name for s in REGISTRY if s.config)  # what `less-ray config NAME` and `--set` know


def get_stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise ValueError(f"no stage {name!r}; stages: {', '.join(BY_NAME)}, selector:<name>")
    return BY_NAME[name]
