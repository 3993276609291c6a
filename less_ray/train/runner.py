"""`run_warmup` / `run_train`: the driver side (data draw, Ray Train fit, exported layout).

Ray Train keeps its run under `<storage_path>/<warmup|train>-<config hash>/epoch_<k>`
(default storage `<out>/ray`); each epoch folder also holds DeepSpeed's per-rank resume
state. Rerunning the same config resumes that run from its last epoch (Ray Train V2
restores runs by storage path and name); any change to the config starts a new run. After
`fit()` the files later stages read are copied out of Ray's checkpoints to
`<out>/checkpoints/epoch_<k>/` (warmup) or `<out>/model/` (train); Ray's folder can be
deleted once the run is done.

Paths in the config (base model, data, out) must be readable by every worker: on a
multi-node cluster, a shared file system.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from ..config import absolute_paths, config_hash, config_to_dict, save_config
from ..core.formatting import FormatConfig
from ..ray_runtime import ensure_ray
from .checkpoint import (MODEL_DIR, STATE_FILE, WARMUP_DATA_FILE, data_hash, export_checkpoint,
                         read_state, write_json, write_warmup_manifest)
from .config import TrainConfig, WarmupConfig
from .engine import section_dtype
from .loop import LoopSpec
from .plan import accumulation_steps

log = logging.getLogger("less_ray")


def draw_warmup(records: list, percentage: float, data_seed: int) -> list:
    """int(n * percentage) records (as LESS), drawn with `data_seed`, kept in pool order."""
    if not 0 < percentage <= 1:
        raise ValueError(f"percentage must be in (0, 1], got {percentage}")
    k = max(1, int(len(records) * percentage))
    chosen = np.sort(np.random.default_rng(data_seed).permutation(len(records))[:k])
    return [records[i] for i in chosen]


def _tokenized_ids(path: Path, base_model: str, fmt: FormatConfig) -> tuple[list[str], int]:
    from ..data.io import read_records
    from ..models import load_tokenizer
    from ..core.formatting import tokenize_records
    kept, skipped = tokenize_records(read_records(path).records, load_tokenizer(base_model), fmt)
    if not kept:
        raise ValueError(f"{path}: no example has assistant tokens left to train on")
    for s in skipped[:5]:
        log.warning("skipping %s: %s", s.id, s.reason)
    return [e.id for e in kept], len(skipped)


def resolve_training_dtype(cfg, kind: str) -> None:
    """deepspeed.dtype `auto` resolved in place before anything is written: config.yaml, every
    checkpoint's state and a replay carry the dtype the run trained in."""
    requested = cfg.deepspeed.dtype
    cfg.deepspeed.dtype, why = section_dtype(cfg)
    if requested != cfg.deepspeed.dtype:
        log.info("%s: deepspeed.dtype %s -> %s (%s)", kind, requested, cfg.deepspeed.dtype, why)


def _spec(cfg, data_path: Path, ids: list[str], save_moments: bool, export_every_epoch: bool,
          state_extra: dict) -> LoopSpec:
    s = cfg.scaling
    return LoopSpec(
        base_model=cfg.base_model, data_path=str(data_path), data_hash=data_hash(ids),
        format=FormatConfig(cfg.chat_format, cfg.max_seq_length), lora=cfg.lora, optim=cfg.optim,
        zero_stage=cfg.deepspeed.zero_stage, dtype=cfg.deepspeed.dtype,
        gradient_checkpointing=cfg.deepspeed.gradient_checkpointing, use_gpu=s.use_gpu, seed=cfg.seed,
        per_device=s.per_device_batch_size,
        accumulation=accumulation_steps(s.effective_batch_size, s.per_device_batch_size, s.num_workers),
        save_moments=save_moments, export_every_epoch=export_every_epoch,
        state_extra={**state_extra, "config": config_to_dict(cfg)})


def _fit(cfg, spec: LoopSpec, out: Path, kind: str):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .loop import train_loop_per_worker

    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {})}
    given = cfg.ray.storage_path
    # a URI (s3://, gs://) goes to Ray as is; a local path is made absolute for every worker
    storage = given if given and "://" in given else Path(given or out / "ray").resolve()
    started = ensure_ray(cfg.ray.address, cfg.ray.num_cpus)
    try:
        trainer = TorchTrainer(
            train_loop_per_worker, train_loop_config={"spec": spec},
            scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(
                name=f"{kind}-{config_hash(cfg)}", storage_path=str(storage),
                checkpoint_config=CheckpointConfig(num_to_keep=None),
                failure_config=FailureConfig(max_failures=cfg.ray.max_failures,
                                             controller_failure_limit=cfg.ray.controller_failure_limit)))
        result = trainer.fit()
        by_epoch = {}
        for ckpt, _ in result.best_checkpoints:
            with ckpt.as_directory() as d:  # local storage: the folder itself
                state = read_state(d)
            by_epoch[state["epoch"]] = (ckpt, state)
    finally:
        if started:
            ray.shutdown()
    missing = sorted(set(range(1, cfg.optim.epochs + 1)) - set(by_epoch))
    if missing:
        raise RuntimeError(f"Ray run {result.path} is missing checkpoints of epochs {missing}")
    return result, by_epoch


def _export(ckpt, dst: Path, lora: bool) -> None:
    with ckpt.as_directory() as d:
        export_checkpoint(Path(d), dst, lora)


def run_warmup(cfg: WarmupConfig) -> Path:
    """LESS step 1: LoRA-train on a seeded random `percentage` of the pool; one checkpoint
    (adapter + AdamW moments + state) per epoch, listed in <out>/warmup_manifest.json."""
    from ..data.io import read_records, write_jsonl
    from ..storage import require_local
    require_local(cfg.out, "warmup: out")
    if not cfg.lora.enabled:
        raise ValueError("warmup trains LoRA (the gradient datastore reads LoRA gradients); set lora.enabled: true")
    resolve_training_dtype(cfg, "warmup")
    absolute_paths(cfg)  # workers run in their own folders: nothing relative may reach them
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pool = read_records(cfg.pool).records
    chosen = draw_warmup(pool, cfg.percentage, cfg.data_seed)
    data_path = out / WARMUP_DATA_FILE
    write_jsonl(chosen, data_path)
    save_config(cfg, out / "config.yaml")
    ids, n_skipped = _tokenized_ids(data_path, cfg.base_model, FormatConfig(cfg.chat_format, cfg.max_seq_length))
    extra = {"data_seed": cfg.data_seed, "percentage": cfg.percentage, "n_pool": len(pool)}
    spec = _spec(cfg, data_path, ids, save_moments=True, export_every_epoch=True, state_extra=extra)
    result, by_epoch = _fit(cfg, spec, out, "warmup")
    entries = []
    for epoch, (ckpt, state) in sorted(by_epoch.items()):
        dst = out / "checkpoints" / f"epoch_{epoch}"
        _export(ckpt, dst, lora=True)
        entries.append({"path": str(dst), "epoch": epoch, "avg_lr": state["avg_lr"]})
    write_warmup_manifest(out, entries, {
        "base_model": cfg.base_model, "data": str(data_path), "data_hash": spec.data_hash,
        "n_examples": len(ids), "n_skipped": n_skipped, "seed": cfg.seed, **extra,
        "ray_run": result.path})
    return out


def run_train(cfg: TrainConfig) -> Path:
    """LESS step 4: train on a selection (LoRA or full fine-tune, any base model);
    <out>/model is the final adapter (or model) with the tokenizer, <out>/state.json its state."""
    from ..models import load_tokenizer
    from ..storage import require_local
    require_local(cfg.out, "train: out")
    resolve_training_dtype(cfg, "train")
    absolute_paths(cfg)  # workers run in their own folders: nothing relative may reach them
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    data_path = Path(cfg.data).resolve()
    ids, n_skipped = _tokenized_ids(data_path, cfg.base_model, FormatConfig(cfg.chat_format, cfg.max_seq_length))
    spec = _spec(cfg, data_path, ids, save_moments=False, export_every_epoch=False,
                 state_extra={"data": str(data_path), "n_skipped": n_skipped})
    result, by_epoch = _fit(cfg, spec, out, "train")
    last, state = by_epoch[cfg.optim.epochs]
    staging = out / "model.tmp"
    _export(last, staging, cfg.lora.enabled)
    model_dir = out / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    if cfg.lora.enabled:
        staging.rename(model_dir)
        (model_dir / STATE_FILE).unlink()
        load_tokenizer(cfg.base_model).save_pretrained(str(model_dir))
    else:
        (staging / MODEL_DIR).rename(model_dir)
        shutil.rmtree(staging)
    write_json({**state, "ray_run": result.path}, out / STATE_FILE)
    return out

