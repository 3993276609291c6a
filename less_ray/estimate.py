"""`less-ray plan`: the work each stage of a pipeline config will do, before anything runs.

Counts are exact (records, warmup draw, selection size, checkpoints, feature bytes); token
counts come from tokenising a sample of the pool with the base model's tokenizer; the model's
and the LoRA adapter's parameter counts from building both on the meta device (no weights
read). FLOPs use the usual 6 x parameters x tokens for a forward and backward pass (an upper
bound with LoRA, whose frozen weights need no weight gradient) and 2 x P x d per example for a
dense projection. Seconds are FLOPs at a stated rate: an estimate, not a measurement.
"""
from __future__ import annotations

import math
import random
from typing import Any

# measured on this project's 2-core CI CPU (bench/results/extract_core_cpu.txt): the batched
# LoRA gradient pass runs at ~58% of a 105 GFLOP/s fp32 matmul per thread; the sign-lookup
# projection costs ~0.02 ns per matrix entry per example
CPU_FLOPS_PER_CORE = 60e9
CPU_PROJECTION_S_PER_ENTRY = 0.02e-9
TOKEN_SAMPLE = 400
# Measured extraction rates: seconds per example per actor thread, by model shape and host CPU
# (a plan for a matching model on a matching host shows the measured rate, else the FLOP estimate)
MEASURED_EXTRACT = [
    {"shape": {"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49152}, "cpu": "AMD EPYC",
     "s_per_example": 0.673, "what": "SmolLM2-135M, LoRA r=128 q/k/v/o, bf16, d=8192 sjlt, 112 tokens/example",
     "source": "bench/results/peers_cpu.txt run 9"},
    {"shape": {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1024}, "cpu": "AMD EPYC",
     "s_per_example": 2 * 159.0 / 100_000, "what": "the tiny demo model, LoRA r=4, d=1024, 2 actors",
     "source": "bench/results/scale_cpu.txt N=100000"},
]
SIZING_DIMS = (1024, 4096, 8192)


def model_sizes(base_model: str, lora: Any) -> dict[str, int]:
    """Parameters of the base model and of its LoRA adapter (LESS's gradient dimension P)."""
    from peft import LoraConfig, get_peft_model

    from .resources import meta_model
    model = meta_model(base_model)
    total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules)))
    lora_params = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return {"model_params": int(total), "lora_params": int(lora_params)}


def token_stats(records: list, base_model: str, chat_format: str, max_seq_length: int, seed: int) -> dict[str, float]:
    from .core.formatting import FormatConfig, tokenize_records
    from .models import load_tokenizer
    sample = random.Random(seed).sample(records, min(TOKEN_SAMPLE, len(records)))
    kept, skipped = tokenize_records(sample, load_tokenizer(base_model), FormatConfig(chat_format, max_seq_length))
    n = max(1, len(kept))
    return {"sampled": len(sample), "mean_tokens": sum(len(e.input_ids) for e in kept) / n,
            "mean_label_tokens": sum(e.n_label_tokens for e in kept) / n,
            "skipped_share": len(skipped) / max(1, len(sample))}


def measured_rate(base_model: str, cpu: str) -> dict[str, Any] | None:
    """The measured extraction rate for a model of this shape on this kind of CPU, if any."""
    import json
    from pathlib import Path
    try:
        conf = json.loads((Path(base_model) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for m in MEASURED_EXTRACT:
        if all(conf.get(k) == v for k, v in m["shape"].items()) and cpu.startswith(m["cpu"]):
            return m
    return None


def sizing(n: int, checkpoints: int, dims: list[int]) -> list[dict[str, Any]]:
    """Pool store bytes (features only) for n candidates, per dim and dtype, over all checkpoints."""
    from .core.quantize import DTYPES, row_bytes
    return [{"dim": d, "dtype": t, "bytes": n * checkpoints * row_bytes(t, d)} for d in dims for t in DTYPES]


def plan_pipeline(cfg: Any, candidates: int | None = None) -> dict[str, Any]:
    """The work per stage of PipelineConfig `cfg` (paths absolute, preflight passed). `candidates`:
    size the run for that many pool records (tokens as in a sample of the pool file)."""
    from .data.io import read_records
    from .extract.job import resolved_precision
    from .pipeline import scored_dim
    from .train.engine import section_dtype
    from .preflight import eval_tasks_for, heldout_count, pipeline_selection_count
    pool = read_records(cfg.pool).records
    n_pool = candidates or len(pool)
    targets = {}
    for task, path in cfg.targets.items():
        n = len(read_records(path).records)
        held = heldout_count(n, cfg.eval.heldout_fraction) if (
            f"loss:{task}" in eval_tasks_for(cfg, task) and task not in cfg.eval.heldout) else 0
        targets[task] = {"targets": n - held, "held_out": held}
    sizes = model_sizes(cfg.base_model, cfg.warmup.lora)
    tok = token_stats(pool, cfg.base_model, cfg.chat_format, cfg.max_seq_length, cfg.seed)
    ckpts = cfg.warmup.optim.epochs
    n_warm = max(1, int(n_pool * cfg.warmup.percentage))
    k = pipeline_selection_count(cfg, n_pool)
    dim, proj = scored_dim(cfg), cfg.extract.projection
    n_targets = sum(t["targets"] for t in targets.values())
    train_flops = lambda examples, epochs: 6 * sizes["model_params"] * tok["mean_tokens"] * examples * epochs
    from .core.quantize import row_bytes
    from .pipeline import target_dtype
    feature_bytes = (n_pool * row_bytes(cfg.extract.dtype, dim)
                     + n_targets * row_bytes(target_dtype(cfg.extract.dtype), dim)) * ckpts
    proj_entries = sizes["lora_params"] * dim if proj == "rademacher" else 0
    extract_rows = (n_pool + n_targets) * ckpts
    def dtype(section):  # deepspeed.dtype as run_warmup / run_train will resolve it
        got, why = section_dtype(section)
        return {"requested": section.deepspeed.dtype, "resolved": got, "why": why}

    stages = {
        "warmup": {"examples": n_warm, "dtype": dtype(cfg.warmup), "epochs": ckpts, "checkpoints": ckpts,
                   "optimizer_steps": math.ceil(n_warm / cfg.warmup.scaling.effective_batch_size) * ckpts,
                   "flops": train_flops(n_warm, ckpts)},
        "extract": {"examples": extract_rows, "pool_rows_per_checkpoint": n_pool, "target_rows_per_checkpoint": n_targets,
                    "projection": proj, "dim": dim, "gradient_dim": sizes["lora_params"],
                    "precision": dict(zip(("resolved", "why"), resolved_precision(cfg.extract)),
                                      requested=cfg.extract.precision),
                    "flops": 6 * sizes["model_params"] * tok["mean_tokens"] * extract_rows,
                    "projection_entries": proj_entries * extract_rows,
                    "feature_bytes": feature_bytes},
        "score": {"pool_rows": n_pool, "checkpoints": ckpts, "flops": 2 * n_pool * dim * ckpts * max(1, n_targets)},
        "select": {"k_per_task": k, "tasks": len(targets)},
        "train": {"examples_per_task": k, "epochs": cfg.train.optim.epochs, "tasks": len(targets),
                  "dtype": dtype(cfg.train),
                  "flops": train_flops(k, cfg.train.optim.epochs) * len(targets)},
        "eval": {task: eval_tasks_for(cfg, task) for task in targets},
    }
    cores = cfg.ray.num_cpus or _cores()
    for name in ("warmup", "extract", "score", "train"):
        s = stages[name]
        seconds = s["flops"] / (CPU_FLOPS_PER_CORE * cores)
        if name == "extract":
            seconds += s["projection_entries"] * CPU_PROJECTION_S_PER_ENTRY / cores
        s["cpu_seconds_estimate"] = round(seconds, 1)
    from .core.precision import cpu_model
    from .pipeline import extract_config
    from .resources import extract_memory_bytes, model_shape
    measured = measured_rate(cfg.base_model, cpu_model())
    if measured:
        stages["extract"]["measured"] = {**measured, "seconds": round(measured["s_per_example"] * extract_rows / cores, 1)}
    ecfg = extract_config(cfg, "", cfg.pool, cfg.out or ".", "adam")  # as the pipeline will run it
    stages["extract"]["actor_memory_bytes"] = extract_memory_bytes(ecfg, model_shape(cfg.base_model), sizes["lora_params"])
    stages["extract"]["sizing"] = sizing(n_pool, ckpts, sorted({dim, *SIZING_DIMS}))
    return {"pool": {"path": cfg.pool, "records": n_pool, "sized_for": candidates},
            "targets": targets, "model": {"path": cfg.base_model, **sizes},
            "tokens": tok, "stages": stages, "cpu_cores": cores,
            "rate": f"{CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per CPU core (fp32, measured for the batched gradient pass)"}


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _human(x: float, unit: str = "") -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {suffix}{unit}"
    return f"{x:.0f} {unit}".rstrip()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def format_plan(plan: dict[str, Any]) -> str:
    s, m, t = plan["stages"], plan["model"], plan["tokens"]
    sized = f", sized for {plan['pool']['sized_for']} candidates" if plan["pool"].get("sized_for") else ""
    lines = [f"pool     {plan['pool']['records']} records  ({plan['pool']['path']}{sized})",
             "targets  " + ", ".join(f"{k}: {v['targets']} (+{v['held_out']} held out)" for k, v in plan["targets"].items()),
             f"model    {_human(m['model_params'])} parameters, LoRA gradient dimension P = {_human(m['lora_params'])}",
             f"tokens   {t['mean_tokens']:.0f} per example ({t['mean_label_tokens']:.0f} labelled; sample of {t['sampled']},"
             f" {t['skipped_share']:.0%} would be skipped as all-truncated)", ""]
    w, e, sc, tr = s["warmup"], s["extract"], s["score"], s["train"]
    cpu = lambda d: f"~{_duration(d['cpu_seconds_estimate'])} on {plan['cpu_cores']} CPU cores"
    lines += [f"warmup   {w['examples']} examples x {w['epochs']} epochs = {w['optimizer_steps']} optimizer steps,"
              f" {w['checkpoints']} checkpoints; {_human(w['flops'], 'FLOP')}, {cpu(w)}",
              f"         dtype {w['dtype']['requested']} -> {w['dtype']['resolved']} ({w['dtype']['why']})",
              f"extract  {e['examples']} gradient features ({e['pool_rows_per_checkpoint']} pool +"
              f" {e['target_rows_per_checkpoint']} targets per checkpoint), {e['projection']} projection to d = {e['dim']};"
              f" {_human(e['flops'], 'FLOP')} + {_human(e['projection_entries'], '')} projection entries;"
              f" store {_human(e['feature_bytes'], 'B')}; {cpu(e)}",
              *([f"         measured: {e['measured']['s_per_example']:.4g} s/example per core on "
                 f"{e['measured']['cpu']} ({e['measured']['what']}; {e['measured']['source']}): "
                 f"~{_duration(e['measured']['seconds'])} on {plan['cpu_cores']} CPU cores"] if e.get("measured") else []),
              f"         memory per extraction actor ~{_human(e['actor_memory_bytes'], 'B')}; pool store by d x dtype"
              f" ({s['score']['checkpoints']} checkpoint(s)):",
              *(f"           d={d}: " + ", ".join(f"{z['dtype']} {_human(z['bytes'], 'B')}" for z in e["sizing"]
                                              if z["dim"] == d)
                for d in dict.fromkeys(z["dim"] for z in e["sizing"])),
              f"         precision {e['precision']['requested']} -> {e['precision']['resolved']}"
              f" ({e['precision']['why']})",
              f"score    {sc['pool_rows']} rows x {sc['checkpoints']} checkpoints; {_human(sc['flops'], 'FLOP')}, {cpu(sc)}",
              f"select   top {s['select']['k_per_task']} per task, {s['select']['tasks']} task(s)",
              f"train    {tr['examples_per_task']} examples x {tr['epochs']} epochs x {tr['tasks']} task(s);"
              f" {_human(tr['flops'], 'FLOP')}, {cpu(tr)}",
              f"         dtype {tr['dtype']['requested']} -> {tr['dtype']['resolved']} ({tr['dtype']['why']})",
              "eval     " + "; ".join(f"{k}: {', '.join(v)}" for k, v in s["eval"].items()),
              "", f"estimates: FLOPs at {plan['rate']}; a GPU is typically 20-100x faster (not measured here)"]
    lines += [f"warning: {x}" for x in plan.get("warnings", [])]
    return "\n".join(lines)
