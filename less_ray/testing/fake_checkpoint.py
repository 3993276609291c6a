"""A warmup-style checkpoint without training: LoRA adapter with random B (peft initialises B
to zero, which would make every lora_A gradient zero), random AdamW moments, state.json."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def make_lora_checkpoint(base_model: str | Path, out: str | Path, r: int = 4, alpha: int = 8,
                         target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), seed: int = 0,
                         avg_lr: float = 2e-5, epoch: int = 1) -> Path:
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from ..models import load_model_and_tokenizer
    out = Path(out)
    model, _ = load_model_and_tokenizer(base_model)
    g = torch.Generator().manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                  target_modules=list(target_modules), task_type="CAUSAL_LM"))
    moments = {}
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
                moments[f"{name}.exp_avg"] = torch.randn(p.shape, generator=g) * 1e-3
                moments[f"{name}.exp_avg_sq"] = torch.rand(p.shape, generator=g) * 1e-5
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    save_file(moments, str(out / "optimizer_moments.safetensors"))
    (out / "state.json").write_text(json.dumps({
        "epoch": epoch, "global_step": 10 * epoch, "avg_lr": avg_lr, "seed": seed, "base_model": str(base_model),
        "adam": {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}}))
    return out
