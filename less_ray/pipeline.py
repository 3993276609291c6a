"""`less-ray pipeline`: warmup -> extract -> score -> select -> train -> eval -> report, one run folder.

    <out>/pipeline.config.yaml         the resolved config (replays the run)
    <out>/warmup/                       checkpoints/epoch_<k>/, warmup_manifest.json
    <out>/datastore/epoch_<k>/pool/dim<d>/, .../<task>/dim<d>/   gradient stores
    <out>/scores/<task>/                scores.parquet, top_p*.jsonl, sorted.csv
    <out>/selectors/<name>/             other selectors (`selectors:`), the same score folder layout
    <out>/train/<task>/                 the target model trained on the selection
    <out>/eval/<task>.json              its evaluation (<task>.base.json: the base model's)
    <out>/targets/<task>.jsonl          the targets that select (<task>.heldout.jsonl: held out for eval)
    <out>/report.html
    <out>/stages.json                   per stage: config hash, seconds, counts

A stage whose artifact exists with the same config hash is skipped; an interrupted one is rerun
and resumes where its own artifact allows (extraction per shard, training per epoch).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .config import absolute_paths, config_hash, save_config, path_field, section, stage_config
from .core.formatting import ChatFormat
from .eval.runner import EvalConfig, run_eval
from .core.quantize import CODED_DTYPES
from .core.projectors import DEFAULT_DIMS
from .extract.job import ExtractConfig, run_extract, store_dir
from .ray_runtime import ensure_ray
from .run_lock import locked
from .scoring.job import ScoreConfig, TaskSpec, run_score
from .selection.report import ReportConfig, run_report
from .stages import PIPELINE_STAGES
from .selection.select import SELECTION_MANIFEST, SelectConfig, read_selection_manifest, run_select, selection_name
from .train.config import RaySettings, TrainConfig, WarmupConfig

log = logging.getLogger("less_ray")


# Each section is its stage's own config, less the fields the pipeline fills in (config.section):
# nothing is declared twice, and a field added to a stage reaches the pipeline by itself.
_RUN = {"seed": "seed", "chat_format": "chat_format", "max_seq_length": "max_seq_length"}
_RAY_STAGE = {"address": "ray.address", "num_cpus": "ray.num_cpus"}
WarmupSection = section(WarmupConfig, "WarmupSection", {
    "pool": "pool", "out": "<out>/warmup", "base_model": "base_model", "ray": "ray", **_RUN})
ExtractSection = section(ExtractConfig, "ExtractSection", {
    "data": "pool, targets", "checkpoint": "the warmup's checkpoints", "out": "<out>/datastore/epoch_<k>/<name>",
    "kind": "adam for the pool, sgd for the targets", "base_model": "base_model",
    "chat_format": "chat_format", "max_seq_length": "max_seq_length", **_RAY_STAGE},
    moved={"dim": "extract.dims (a list of one dim, e.g. [8192])"})
ScoreSection = section(ScoreConfig, "ScoreSection", {
    "pool_stores": "the datastore", "tasks": "targets", "out": "<out>/scores", **_RAY_STAGE},
    moved={"top_p": "select.top_p"})
SelectSection = section(SelectConfig, "SelectSection", {"scores": "<out>/scores", "pool": "pool"})
TrainSection = section(TrainConfig, "TrainSection", {
    "data": "the selection", "out": "<out>/train/<task>", "ray": "ray", **_RUN},
    optional={"base_model": "base_model"},  # unset: the warmup's base model; another one: LESS-T
    moved={"model": "train.base_model"})
EvalSection = section(EvalConfig, "EvalSection", {
    "model": "the trained model, and the base", "base_model": "base_model or train.base_model",
    "out": "<out>/eval/<task>.json", "chat_format": "chat_format", "seed": "seed"}, own={
    # target task -> eval tasks; default: the benchmark of that name (bbh, mmlu, tydiqa), else
    # `loss:<task>`, the mean answer-token loss on held-out examples of the task
    "tasks": (dict[str, list[str]], field(default_factory=dict, metadata={
        "help": "target task -> eval tasks; default: the benchmark of that name (bbh, mmlu, tydiqa), else "
                "loss:<task>, the mean answer-token loss on held-out examples of the task"})),
    "heldout": (dict[str, str], field(default_factory=dict, metadata={
        "path": "in", "help": "task -> held-out examples for loss:<task>"})),
    "heldout_fraction": (float, field(default=0.2, metadata={
        "help": "without such a file: this share of the targets, never used for selection"})),
    "base": (bool, field(default=True, metadata={"help": "evaluate the base model too, beside each trained one"}))})
ReportSection = section(ReportConfig, "ReportSection", {
    "scores": "<out>/scores", "out": "<out>/report.html", "pool": "pool", "top_p": "select.top_p"})


@dataclass
class PipelineConfig:
    out: str = path_field("out", "")
    base_model: str = path_field("model", "")
    pool: str = path_field("in", "")  # candidate pool (schema JSONL/Parquet)
    targets: dict[str, str] = path_field("in", {})  # task name -> target examples file
    seed: int = 0
    chat_format: ChatFormat = "less"  # less: the tokens LESS's code makes | tulu_stripped | template
    max_seq_length: int = 2048
    stages: list[str] = field(default_factory=lambda: list(PIPELINE_STAGES))
    warmup: WarmupSection = field(default_factory=WarmupSection)
    extract: ExtractSection = field(default_factory=ExtractSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    select: SelectSection = field(default_factory=SelectSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    report: ReportSection = field(default_factory=ReportSection)
    ray: RaySettings = field(default_factory=RaySettings)
    # other selectors (less_ray.selectors) over the same pool: name -> options of its config
    # ("name@label" runs the selector once more under its own folder, e.g. random@2: {seed: 2}); the
    # pipeline fills pool, targets, out (<out>/selectors/<name>), seed, top_p, Ray settings, the
    # base model, a warmup checkpoint (the first for el2n/grand, else the last) and one shared
    # embedding folder where the selector has such fields and leaves them unset
    selectors: dict[str, dict[str, Any]] = field(default_factory=dict)


class Run:
    """The run folder and its stage ledger (stages.json)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.root = Path(cfg.out).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.root / "stages.json"
        self.ledger: dict[str, Any] = json.loads(self.ledger_path.read_text()) if self.ledger_path.exists() else {}

    def stage(self, name: str, stage_cfg: Any, artifact: Path, fn: Callable[[], Any],
              folder: Path | None = None, watch: tuple[Path, ...] = (),
              describe: Callable[[Any], str] | None = None) -> Any:
        """Run `fn` unless `artifact` exists from a finished run of the same config on inputs of the
        same content. A stage that starts over with another config or other inputs first clears
        `folder` (its own), so nothing it left earlier (shards, Ray runs) is taken for new work; an
        interrupted run of the same config and inputs resumes there. `watch`: inputs the stage
        reads that its config does not name; `describe(result)`: counts for the log line."""
        from .fingerprint import content_fingerprint, input_fingerprints
        inputs = {**input_fingerprints(stage_cfg), **{f"watch:{p}": content_fingerprint(p) for p in watch}}
        h = config_hash(stage_cfg)
        key = hashlib.sha256(json.dumps([h, inputs], sort_keys=True).encode()).hexdigest()[:16]
        done = self.ledger.get(name)
        if done and done.get("key") == key and done.get("state") == "done" and artifact.exists():
            log.info("stage %-8s skipped: %s is up to date", name, artifact)
            return done.get("result")
        if done and done.get("key") != key:
            changed = _what_changed(done, h, inputs)
            log.info("stage %-8s reruns: %s", name, changed)
            if folder is not None and folder.exists():
                shutil.rmtree(folder)
        self._record(name, {"key": key, "config_hash": h, "inputs": inputs, "state": "running",
                            "artifact": str(artifact)})
        t0 = time.time()
        result = fn()
        self._record(name, {**self.ledger[name], "state": "done", "seconds": round(time.time() - t0, 1),
                            "result": _jsonable(result)})
        what = f" ({describe(result)})" if describe else ""
        log.info("stage %-8s done in %.1fs%s -> %s", name, time.time() - t0, what, artifact)
        return self.ledger[name]["result"]

    def _record(self, name: str, entry: dict[str, Any]) -> None:
        self.ledger[name] = entry
        tmp = self.ledger_path.with_name(self.ledger_path.name + ".tmp")
        tmp.write_text(json.dumps(self.ledger, indent=2))
        tmp.replace(self.ledger_path)  # a killed run leaves the old ledger or the new one, whole


def _store_counts(result: dict[str, str]) -> str:
    """An extract stage's counts, from its stores' manifests."""
    parts = []
    for path in result.values():
        m = json.loads((Path(path) / "manifest.json").read_text())
        n_skipped = int((m.get("skipped") or {}).get("count") or 0)  # the manifest's {"count", "file"}
        parts.append(f"{m.get('count')} examples" + (f", {n_skipped} skipped" if n_skipped else ""))
    return "; ".join(parts)


def _what_changed(done: dict[str, Any], config_hash_now: str, inputs_now: dict[str, str]) -> str:
    before = done.get("inputs", {})
    changed = [k for k in sorted(set(before) | set(inputs_now)) if before.get(k) != inputs_now.get(k)]
    parts = [f"input {k} content changed" for k in changed]
    if done.get("config_hash") != config_hash_now:
        parts.append("its config changed")
    return "; ".join(parts) or "the previous run did not finish"


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def warmup_config(cfg: PipelineConfig, run: Run) -> WarmupConfig:
    return stage_config(cfg.warmup, pool=cfg.pool, out=str(run.root / "warmup"), base_model=cfg.base_model,
                        ray=cfg.ray, **run_settings(cfg))


def run_settings(cfg: PipelineConfig) -> dict[str, Any]:
    return {"seed": cfg.seed, "chat_format": cfg.chat_format, "max_seq_length": cfg.max_seq_length}


def stage_ray(cfg: PipelineConfig) -> dict[str, Any]:
    """The Ray every Ray Data stage of the run joins (RayStage's fields)."""
    return {"address": cfg.ray.address, "num_cpus": cfg.ray.num_cpus}


def scored_dim(cfg: PipelineConfig) -> int:
    return (cfg.extract.dims or DEFAULT_DIMS)[0]


def extract_config(cfg: PipelineConfig, ckpt: str, data: str, out: Path, kind: str) -> ExtractConfig:
    ecfg = stage_config(cfg.extract, data=data, checkpoint=ckpt, out=str(out), kind=kind, base_model=cfg.base_model,
                        chat_format=cfg.chat_format, max_seq_length=cfg.max_seq_length, **stage_ray(cfg))
    if kind == "sgd":
        ecfg.dtype = target_dtype(ecfg.dtype)
    return ecfg


def target_dtype(dtype: str) -> str:
    """The target stores' dtype under extract.dtype `dtype`: a coded dtype compacts the pool only;
    targets are few, and their gradients' heavy tails (max/rms ~15 at d=65536) cost coded targets
    most of their agreement (docs/results.md §5), so they stay float16."""
    return "float16" if dtype in CODED_DTYPES else dtype


def score_config(cfg: PipelineConfig, pool_stores: list[str], target_stores: dict[str, list[str]],
                 out: Path) -> ScoreConfig:
    sc = stage_config(cfg.score, pool_stores=pool_stores, tasks=[TaskSpec(t, s) for t, s in target_stores.items()],
                      out=str(out), **stage_ray(cfg))
    # select's round-robin order takes turns over the subtask scores: score writes them then
    return replace(sc, subtask_scores=True) if cfg.select.order == "round_robin" else sc


def select_config(cfg: PipelineConfig, scores: Path) -> SelectConfig:
    return stage_config(cfg.select, scores=str(scores), pool=cfg.pool)


def train_config(cfg: PipelineConfig, run: Run, task: str, selection: Path) -> TrainConfig:
    return stage_config(cfg.train, data=str(selection), out=str(run.root / "train" / task),
                        base_model=cfg.base_model, ray=cfg.ray, **run_settings(cfg))


def report_config(cfg: PipelineConfig, scores: Path, out: Path) -> ReportConfig:
    return stage_config(cfg.report, scores=str(scores), out=str(out), pool=cfg.pool, top_p=cfg.select.top_p)


def selector_config(cfg: PipelineConfig, run: Run, name: str, checkpoints: list[str],
                    targets: dict[str, str] | None = None) -> Any:
    """The typed config of extra selector `name`: its options, then what the pipeline knows
    (`checkpoints`: the warmup's, in epoch order; the selector says whether it wants the first)."""
    import dataclasses

    from .config import config_from_dict
    from .selectors import SelectorConfig, get_selector
    sel = get_selector(selector_kind(name))
    fields = {f.name: f for f in dataclasses.fields(sel.config_cls)}
    checkpoint = (checkpoints[0] if sel.warmup_checkpoint == "first" else checkpoints[-1]) if checkpoints else None
    known = {"pool": cfg.pool, "out": str(run.root / "selectors" / name), "seed": cfg.seed,
             **stage_ray(cfg), "chat_format": cfg.chat_format,
             "max_seq_length": cfg.max_seq_length, "model": cfg.base_model, "base_model": cfg.base_model,
             "checkpoint": checkpoint, "embeddings": str(run.root / "selectors" / "embeddings"),
             "run_folder": str(run.root)}
    if sel.targeted:
        known["targets"] = dict(targets or cfg.targets)  # the prepared targets: never the held-out ones
    if fields["top_p"].default == SelectorConfig.top_p:  # a selector with its own default (full: 1) keeps it
        known["top_p"] = cfg.select.top_p
    keep = getattr(sel.config_cls, "OWN_DEFAULTS", ())  # a method's own settings (RDS+'s rendering) win
    data = {k: v for k, v in known.items() if k in fields and v is not None and k not in keep}
    data.update(cfg.selectors[name] or {})
    return config_from_dict(sel.config_cls, data, f"pipeline selectors.{name}")


def eval_config(cfg: PipelineConfig, model: str, base: str, tasks: list[str], heldout: dict[str, str],
                out: Path) -> EvalConfig:
    """`model` (an adapter trained on `base`, or `base` itself) on `tasks`; an adapter is loaded
    onto the run's own base model, never onto whatever its adapter_config.json names."""
    return stage_config(cfg.eval, model=model, base_model=base, tasks=tasks, heldout=heldout, out=str(out),
                        chat_format=cfg.chat_format, seed=cfg.seed)


def selector_kind(name: str) -> str:
    """The selector a `selectors:` key runs: "random@2" -> "random" (one more run of it, its own folder)."""
    kind, _, label = name.partition("@")
    if "@" in name and (not label or "/" in label):
        raise ValueError(f"pipeline selectors.{name}: write name@label, a label without '/' (e.g. random@2)")
    return kind


def run_selectors(cfg: PipelineConfig, run: Run, targets: dict[str, str] | None = None) -> dict[str, Any]:
    """Every selector in `cfg.selectors`, each a ledger stage `selector/<name>`."""
    from .selectors import run_selector
    from .train.checkpoint import read_warmup_manifest
    manifest = run.root / "warmup" / "warmup_manifest.json"
    checkpoints = [c["path"] for c in read_warmup_manifest(manifest.parent)["checkpoints"]] if manifest.exists() else []
    out = {}
    for name in cfg.selectors:
        scfg = selector_config(cfg, run, name, checkpoints, targets)
        out[name] = run.stage(f"selector/{name}", scfg, Path(scfg.out) / "score_summary.json",
                              lambda name=name, scfg=scfg: run_selector(selector_kind(name), scfg))
    return out


def prepare_targets(cfg: PipelineConfig, run: Run) -> tuple[dict[str, str], dict[str, str]]:
    """The target files the run selects with, and the held-out files it evaluates on.

    `<run>/targets/<task>.jsonl`: the task's targets, each record's task set to the key under
    `targets:` and a missing subtask set to the task (then all its targets form one subtask).
    A task evaluated by `loss:<task>` without an `eval.heldout` file has a seeded
    `heldout_fraction` of its targets moved to `<task>.heldout.jsonl`, never used for selection."""
    import dataclasses
    import zlib

    import numpy as np

    from .data.io import read_records, write_jsonl
    from .preflight import eval_tasks_for, heldout_count
    folder = run.root / "targets"
    folder.mkdir(exist_ok=True)
    selecting, heldout = {}, dict(cfg.eval.heldout)
    for task, path in cfg.targets.items():
        recs = [dataclasses.replace(r, task=task, subtask=r.subtask or task) for r in read_records(path).records]
        if f"loss:{task}" in eval_tasks_for(cfg, task) and task not in heldout:
            order = np.random.default_rng([cfg.seed, zlib.crc32(task.encode())]).permutation(len(recs))
            held = set(order[:heldout_count(len(recs), cfg.eval.heldout_fraction)].tolist())
            heldout[task] = str(_write_if_changed(write_jsonl, [r for i, r in enumerate(recs) if i in held],
                                                  folder / f"{task}.heldout.jsonl"))
            recs = [r for i, r in enumerate(recs) if i not in held]
        selecting[task] = str(_write_if_changed(write_jsonl, recs, folder / f"{task}.jsonl"))
    return selecting, heldout


def _write_if_changed(write, records: list, path: Path) -> Path:
    """Rewrite `path` only when its records change, so an unchanged rerun leaves it untouched."""
    tmp = path.with_name(path.name + ".tmp")
    write(records, tmp)
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        tmp.replace(path)
    return path


def resolve_precision(cfg: PipelineConfig) -> str:
    """extract.precision `auto` resolved once for the whole run, in the config every extract stage
    and the saved pipeline.config.yaml carry: the stores' identity names the precision they were
    computed in, and a replay computes in it again. Returns the log line."""
    from .extract.job import resolved_precision
    requested = cfg.extract.precision
    cfg.extract.precision, why = resolved_precision(cfg.extract)
    line = f"precision: extract {requested} -> {cfg.extract.precision} ({why})"
    log.info(line)
    return line


@locked("pipeline", local=True)  # one writer per run folder: a second run on it fails fast naming the holder
def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    from .preflight import eval_tasks_for, preflight_pipeline
    from .train.checkpoint import read_warmup_manifest
    from .train.runner import resolve_training_dtype, run_train, run_warmup

    absolute_paths(cfg)  # Ray workers run in their own folders: nothing relative may reach them
    findings = preflight_pipeline(cfg)  # before Ray starts: a config mistake costs a second
    findings.raise_errors("pipeline")
    findings.log_warnings()
    resolve_precision(cfg)
    run = Run(cfg)
    save_config(cfg, run.root / "pipeline.config.yaml")
    target_files, heldout_files = prepare_targets(cfg, run)
    ensure_ray(cfg.ray.address, cfg.ray.num_cpus)  # one Ray for every stage of the run
    want = set(cfg.stages)
    summary: dict[str, Any] = {"run": str(run.root)}
    if want == {"selectors"}:  # other selectors alone need no LESS stage
        summary["selectors"] = run_selectors(cfg, run, target_files)
        (run.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary

    wcfg = warmup_config(cfg, run)
    resolve_training_dtype(wcfg, "warmup")  # before the stage is keyed by its config
    if "warmup" in want:
        run.stage("warmup", wcfg, Path(wcfg.out) / "warmup_manifest.json", lambda: str(run_warmup(wcfg)),
                  folder=Path(wcfg.out))
    ckpts = read_warmup_manifest(wcfg.out)["checkpoints"]

    pool_stores, target_stores = [], {t: [] for t in cfg.targets}
    for c in ckpts:
        base = run.root / "datastore" / f"epoch_{c['epoch']}"
        jobs = [("pool", cfg.pool, "adam")] + [(t, path, "sgd") for t, path in target_files.items()]
        for name, data, kind in jobs:
            ecfg = extract_config(cfg, c["path"], data, base / name, kind)
            # one ledger entry and folder per dim: a run with another dim into the same run folder
            # adds its stores beside the others and leaves them alone
            store = store_dir(base / name, scored_dim(cfg))
            if "extract" in want:
                run.stage(f"extract/epoch_{c['epoch']}/{name}/{store.name}", ecfg, store / "manifest.json",
                          lambda ecfg=ecfg: {str(d): str(p) for d, p in run_extract(ecfg).items()},
                          folder=store, describe=_store_counts)
            (pool_stores if name == "pool" else target_stores[name]).append(str(store))

    scores_dir = run.root / "scores"
    scfg = score_config(cfg, pool_stores, target_stores, scores_dir)
    if "score" in want:
        run.stage("score", scfg, scores_dir / "score_summary.json", lambda: run_score(scfg))
    sel = select_config(cfg, scores_dir)
    if "select" in want:
        first = scores_dir / next(iter(cfg.targets)) / selection_name(sel)
        summary["select"] = run.stage("select", sel, first, lambda: run_select(sel))
    if "selectors" in want and cfg.selectors:
        summary["selectors"] = run_selectors(cfg, run, target_files)

    for task in cfg.targets:
        if (scores_dir / task / SELECTION_MANIFEST).exists():  # select's manifest names its file
            selection = Path(read_selection_manifest(scores_dir / task)["path"])
        elif "train" in want:
            raise FileNotFoundError(f"pipeline: no selection for target {task!r} in {scores_dir / task} "
                                    f"(no {SELECTION_MANIFEST}): run the select stage first")
        else:  # nothing trains here; the path only names where select would write
            selection = scores_dir / task / selection_name(sel)
        tcfg = train_config(cfg, run, task, selection)
        resolve_training_dtype(tcfg, f"train/{task}")
        if "train" in want:
            run.stage(f"train/{task}", tcfg, Path(tcfg.out) / "state.json", lambda tcfg=tcfg: str(run_train(tcfg)))
        base = tcfg.base_model
        models = {"trained": (str(run.root / "train" / task / "model"), run.root / "eval" / f"{task}.json")}
        if cfg.eval.base:
            models["base"] = (base, run.root / "eval" / f"{task}.base.json")
        for which, (model, out) in models.items():
            ecfg = eval_config(cfg, model, base, eval_tasks_for(cfg, task), heldout_files, out)
            if "eval" in want:
                res = run.stage(f"eval/{task}" if which == "trained" else f"eval/base/{task}", ecfg, out,
                                lambda ecfg=ecfg: run_eval(ecfg))
                summary.setdefault("eval", {}).setdefault(task, {})[which] = {
                    t: {k: r[k] for k in ("metric", "score", "n", "answer_loss") if k in r} for t, r in res["tasks"].items()}

    rcfg = report_config(cfg, scores_dir, run.root / "report.html")
    if "report" in want:
        summary["report"] = run.stage("report", rcfg, Path(rcfg.out), lambda: str(run_report(rcfg)),
                                      watch=(run.root / "eval",))  # the page shows every eval result
    (run.root / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
