"""The per-worker train loop Ray Train runs (lives in the package: loops defined elsewhere,
e.g. in test files, do not unpickle in workers).

Loss: each micro-batch's loss is the mean over its label tokens (HF's causal-LM loss, as
LESS trains through HF Trainer); DeepSpeed divides it by the accumulation steps and
averages gradients over workers, so an optimizer step follows the mean of the micro-batch
means. Resuming is at epoch granularity: model, optimizer and scheduler come back from
DeepSpeed's own checkpoint inside the last Ray checkpoint, the data position from its
state.json (the epoch order is a pure function of seed and epoch, see plan.py).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.formatting import FormatConfig
from .config import LoraSettings, OptimSettings


@dataclass
class LoopSpec:
    base_model: str
    data_path: str
    data_hash: str
    format: FormatConfig
    lora: LoraSettings
    optim: OptimSettings
    zero_stage: int
    dtype: str  # resolved: float32 | bfloat16
    gradient_checkpointing: bool
    use_gpu: bool
    seed: int
    per_device: int
    accumulation: int
    save_moments: bool  # warmup: AdamW moments in every checkpoint
    export_every_epoch: bool  # adapter/model in every checkpoint (else only the last)
    state_extra: dict[str, Any] = field(default_factory=dict)  # copied into state.json


def load_examples(spec: LoopSpec, tokenizer):
    from ..core.formatting import tokenize_records
    from ..data.io import read_records
    from .checkpoint import data_hash
    kept, _ = tokenize_records(read_records(spec.data_path).records, tokenizer, spec.format)
    got = data_hash(e.id for e in kept)
    if got != spec.data_hash:  # e.g. another tokenizer or file on this node
        raise RuntimeError(f"{spec.data_path}: worker tokenised a different training set "
                           f"(hash {got}, driver {spec.data_hash})")
    return kept


def _all_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _save_checkpoint(engine, tokenizer, spec: LoopSpec, rank: int, folder: Path, state: dict,
                     export: bool) -> None:
    from .checkpoint import (MODEL_DIR, RESUME_DIR, STATE_FILE, save_adapter, save_full_model,
                             save_moments, write_json)
    from .moments import gather_moments, gather_weights
    engine.save_checkpoint(str(folder / RESUME_DIR), tag=f"epoch_{state['epoch']}",
                           client_state={"epoch": state["epoch"], "global_step": state["global_step"]},
                           exclude_frozen_parameters=spec.lora.enabled)
    moments = gather_moments(engine) if spec.save_moments else None  # collectives: all ranks
    weights = None
    if export:
        weights = gather_weights(engine)
        if not spec.lora.enabled:
            weights = _full_state_dict(engine, weights)
    if rank != 0:
        return
    if export:
        if spec.lora.enabled:
            save_adapter(engine.module, weights, folder)
        else:
            save_full_model(engine.module, weights, tokenizer, folder / MODEL_DIR)
    if moments is not None:
        save_moments(moments, folder)
    write_json(state, folder / STATE_FILE)


def _full_state_dict(engine, trained: dict) -> dict:
    """Every parameter for a full-model save: trained ones as fp32 masters cast back to the
    model dtype, frozen ones gathered (ZeRO 3 partitions them too)."""
    import deepspeed
    out = {}
    for name, p in engine.module.named_parameters():
        if name in trained:
            out[name] = trained[name].to(p.dtype)
        else:
            with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                out[name] = p.data.detach().cpu().clone()
    return out


def train_loop_per_worker(config: dict) -> None:
    spec: LoopSpec = config["spec"]
    from .engine import prepare_deepspeed_env
    prepare_deepspeed_env(spec.use_gpu)

    import ray.train
    import torch

    from ..core.formatting import collate
    from .checkpoint import RESUME_DIR, read_state
    from .engine import build_engine, build_model, deepspeed_config
    from .plan import micro_batches, steps_per_epoch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if spec.use_gpu:  # the GPU Ray assigned this worker; DeepSpeed places the engine there
        import ray.train.torch
        torch.cuda.set_device(ray.train.torch.get_device())
    model, tokenizer = build_model(spec.base_model, spec.dtype, spec.lora, spec.seed,
                                   spec.gradient_checkpointing)
    examples = load_examples(spec, tokenizer)
    n, epochs = len(examples), spec.optim.epochs
    per_epoch = steps_per_epoch(n, spec.per_device * spec.accumulation * world)
    total = per_epoch * epochs
    ds_config = deepspeed_config(spec.zero_stage, spec.per_device, spec.accumulation, world,
                                 spec.optim.max_grad_norm, spec.dtype, spec.lora.enabled)
    engine, _ = build_engine(model, spec.optim, ds_config, total)

    start_epoch, global_step = 1, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            prev = read_state(d)
            if prev["data_hash"] != spec.data_hash:
                raise RuntimeError(f"checkpoint {d} was trained on other data ({prev['data_hash']})")
            engine.load_checkpoint(str(Path(d) / RESUME_DIR), tag=f"epoch_{prev['epoch']}",
                                   load_module_strict=False)
        start_epoch, global_step = prev["epoch"] + 1, prev["global_step"]

    pad_id = tokenizer.pad_token_id
    for epoch in range(start_epoch, epochs + 1):
        # dropout draws depend only on (seed, epoch, rank), so a resumed epoch replays exactly
        torch.manual_seed((spec.seed * 1_000_003 + epoch) * 1_009 + rank)
        engine.train()
        t0, lrs, tokens = time.perf_counter(), [], 0
        # per optimizer step: this rank's micro-batch losses summed, and their count (the curve;
        # the epoch's mean loss is their total over their count)
        step_sum, step_n, opt_step = [0.0] * per_epoch, [0] * per_epoch, 0
        for step, idx in enumerate(micro_batches(n, spec.seed, epoch, spec.per_device,
                                                 spec.accumulation, world, rank)):
            batch = {k: v.to(engine.device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
            loss = engine(**batch).loss
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                lrs.append(engine.get_lr()[0])  # the lr this optimizer step uses
            engine.backward(loss)
            engine.step()
            at = min(opt_step, per_epoch - 1)
            step_sum[at], step_n[at] = step_sum[at] + loss.item(), step_n[at] + 1
            opt_step += boundary
            tokens += int(batch["attention_mask"].sum())
        global_step += per_epoch
        seconds = time.perf_counter() - t0
        # one fixed-length reduce for every rank: tokens, then the per-step sums and counts
        reduced = _all_sum([tokens] + step_sum + step_n, engine.device)
        tokens, sums, counts = reduced[0], reduced[1:1 + per_epoch], reduced[1 + per_epoch:]
        step_losses = [sm / c if c else None for sm, c in zip(sums, counts)]
        state = {
            "epoch": epoch, "global_step": global_step, "avg_lr": sum(lrs) / len(lrs),
            "seed": spec.seed, "data_hash": spec.data_hash, "base_model": spec.base_model,
            "adam": {"betas": list(spec.optim.betas), "eps": spec.optim.eps,
                     "weight_decay": spec.optim.weight_decay},
            "n_examples": n, "steps_per_epoch": per_epoch, "world_size": world,
            "zero_stage": spec.zero_stage, "dtype": spec.dtype,
            "train": {"loss": sum(sums) / sum(counts), "tokens": int(tokens), "seconds": seconds,
                      "step_losses": step_losses},  # mean micro-batch loss of each optimizer step
            **spec.state_extra,
        }
        export = spec.export_every_epoch or epoch == epochs
        with tempfile.TemporaryDirectory(prefix=f"less_ray_epoch{epoch}_") as tmp:
            _save_checkpoint(engine, tokenizer, spec, rank, Path(tmp), state, export)
            metrics = {k: state[k] for k in ("epoch", "global_step", "avg_lr")}
            metrics.update(loss=state["train"]["loss"], tokens=state["train"]["tokens"],
                           seconds=seconds)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch_{epoch}")
