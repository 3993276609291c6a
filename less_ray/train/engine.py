"""Model + LoRA + DeepSpeed engine, built the same way on CPU (gloo) and GPU (NCCL).

Ray Train has already created the torch process group (gloo on CPU, NCCL on GPU);
`deepspeed.initialize` joins it. The optimizer is a client `torch.optim.AdamW` (DeepSpeed's
FusedAdam/CPUAdam would compile for minutes on CPU and change the update rule).
"""
from __future__ import annotations

import importlib
import os
from typing import Any


def prepare_deepspeed_env(use_gpu: bool) -> None:
    """Call before deepspeed is imported in a process."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
    if not use_gpu:
        # every TorchBackend would otherwise compile a shared-memory comm op (~45 s) on CPU;
        # gloo does the same job for us. (importlib: `import deepspeed.comm.torch` gives torch)
        ds_torch = importlib.import_module("deepspeed.comm.torch")
        ds_torch.build_shm_op = lambda: None


def resolve_dtype(dtype: str, use_gpu: bool, lora: bool, zero_stage: int = 0, threads: float = 1) -> tuple[str, str]:
    """(float32 | bfloat16, why) for `deepspeed.dtype`. auto: bf16 on GPU; on a CPU, bf16 for LoRA at
    ZeRO 0-2 where this host's measured bf16 matmul beats fp32 (core/precision.py, the probe
    extraction uses) -- the frozen base runs in bf16, the adapter and AdamW stay fp32
    (bench/results/train_precision_cpu.txt: 1.4x steps/s on a Zen 4) -- else fp32. A CPU full
    fine-tune or ZeRO 3 stays fp32 under auto: DeepSpeed's bf16 optimizer is not exercised on CPU."""
    if dtype != "auto":
        return dtype, "as configured"
    if use_gpu:
        return "bfloat16", "GPU: LESS's bf16"
    if not lora or zero_stage == 3:
        return "float32", "CPU full fine-tune or ZeRO 3: fp32"
    from ..core.precision import resolve_auto
    precision, why = resolve_auto("cpu", threads)
    return ("bfloat16" if precision == "bf16" else "float32"), why


def section_dtype(cfg) -> tuple[str, str]:
    """resolve_dtype for a warmup / train config (or a pipeline's section of one)."""
    return resolve_dtype(cfg.deepspeed.dtype, cfg.scaling.use_gpu, cfg.lora.enabled, cfg.deepspeed.zero_stage,
                         cfg.scaling.cpus_per_worker)


def deepspeed_bf16(dtype: str, lora: bool, zero_stage: int) -> bool:
    """Whether DeepSpeed's own bf16 mode (BF16_Optimizer, fp32 master weights) runs. LoRA in bf16 at
    ZeRO 0-2 needs none of it: the frozen base is loaded in bf16 and peft keeps the adapter fp32, so
    the trained weights, their gradients and AdamW's moments are fp32 as in an fp32 run (equal to
    plain AdamW over the same base, tests/test_train.py) while the base's matmuls run in bf16.
    ZeRO 3 partitions the frozen base with the adapter; mixed there, the moments moved 3e-3 from
    plain AdamW's, so ZeRO 3 (and a full fine-tune) in bf16 keeps DeepSpeed's bf16 mode."""
    return dtype == "bfloat16" and (not lora or zero_stage == 3)


def deepspeed_config(zero_stage: int, per_device: int, accumulation: int, world: int,
                     max_grad_norm: float, dtype: str, lora: bool) -> dict[str, Any]:
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    ds_bf16 = deepspeed_bf16(dtype, lora, zero_stage)
    cfg = {
        "train_micro_batch_size_per_gpu": per_device,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": per_device * accumulation * world,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": ds_bf16},
        "zero_allow_untested_optimizer": True,  # torch AdamW under ZeRO
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if ds_bf16 and zero_stage == 1:
        # DeepSpeed's BF16_Optimizer: fp32 master weights, moments and gradient accumulation
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    return cfg


def build_model(base_model: str, dtype: str, lora, seed: int, gradient_checkpointing: bool):
    """Base causal LM (+ LoRA); the LoRA init is seeded so every rank and every rerun agree."""
    import torch
    from ..models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(base_model, dtype=dtype)
    model.config.use_cache = False
    if lora.enabled:
        from peft import LoraConfig, TaskType, get_peft_model
        cfg = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=lora.r,
                         lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=list(lora.target_modules))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            # autocast_adapter_dtype: over a bf16 base the adapter is kept fp32 (deepspeed_bf16)
            model = get_peft_model(model, cfg, autocast_adapter_dtype=True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if lora.enabled:  # frozen embeddings: make the checkpointed inputs carry grad
            model.enable_input_require_grads()
    return model, tokenizer


def build_engine(model, optim, ds_config: dict, total_steps: int):
    """DeepSpeed engine over a client AdamW and a LambdaLR schedule DeepSpeed steps for us."""
    import deepspeed
    import torch

    from .plan import lr_factor, warmup_steps

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    warm = warmup_steps(total_steps, optim.warmup_ratio)

    def schedule(opt):
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total_steps, warm, optim.scheduler))

    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                   lr_scheduler=schedule, config=ds_config)
    return engine, scheduler
