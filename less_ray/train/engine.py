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


def resolve_dtype(dtype: str, use_gpu: bool) -> str:
    if dtype == "auto":
        return "bfloat16" if use_gpu else "float32"
    return dtype


def deepspeed_config(zero_stage: int, per_device: int, accumulation: int, world: int,
                     max_grad_norm: float, dtype: str) -> dict[str, Any]:
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0-3, got {zero_stage}")
    cfg = {
        "train_micro_batch_size_per_gpu": per_device,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": per_device * accumulation * world,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,  # torch AdamW under ZeRO
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if dtype == "bfloat16" and zero_stage == 1:
        # DeepSpeed's BF16_Optimizer: fp32 master weights, moments and gradient accumulation
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    return cfg


def check_moments_supported(zero_stage: int, dtype: str) -> None:
    """bf16 under ZeRO 0 keeps moments on flat fp32 buffers that DeepSpeed does not map
    back to parameters; ZeRO 1 on one GPU costs nothing extra and does."""
    if dtype == "bfloat16" and zero_stage == 0:
        raise ValueError("saving AdamW moments with bf16 needs deepspeed.zero_stage >= 1 "
                         "(ZeRO 1 on a single GPU behaves like ZeRO 0)")


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
            model = get_peft_model(model, cfg)
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
