"""Loading a warmup checkpoint for gradient extraction.

A checkpoint folder holds a peft LoRA adapter (adapter_config.json,
adapter_model.safetensors), `optimizer_moments.safetensors` with fp32 tensors keyed
"<peft parameter name>.exp_avg" / ".exp_avg_sq" (names as in the PeftModel's
named_parameters()), and state.json.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .grads import Moments

MOMENTS_FILE = "optimizer_moments.safetensors"


def load_lora_checkpoint(base_model_dir: str | Path, ckpt_dir: str | Path, dtype: str = "float32",
                         device: str | torch.device = "cpu"):
    """(PeftModel in eval mode with trainable LoRA parameters, tokenizer of the base model)."""
    from peft import PeftModel

    from ..models import load_model_and_tokenizer
    if not Path(ckpt_dir).is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no such checkpoint folder")
    base, tokenizer = load_model_and_tokenizer(base_model_dir, dtype=dtype)
    # is_trainable: the LoRA parameters must require grad for the backward to reach them;
    # local_files_only: the adapter is this folder, never a hub download (the base model is
    # `base_model_dir`, not what adapter_config.json names)
    model = PeftModel.from_pretrained(base, str(ckpt_dir), is_trainable=True, local_files_only=True)
    model.to(device).eval()
    return model, tokenizer


def load_moments(ckpt_dir: str | Path, model: torch.nn.Module) -> Moments:
    """The checkpoint's Adam moments ordered like the model's trainable parameters."""
    from safetensors.torch import load_file
    path = Path(ckpt_dir) / MOMENTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: adam features need the warmup optimizer's moments")
    stored = load_file(str(path))
    names, m, v, missing = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        names.append(name)
        for suffix, out in ((".exp_avg", m), (".exp_avg_sq", v)):
            t = stored.get(name + suffix)
            if t is None:
                missing.append(name + suffix)
                continue
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{path}: {name + suffix} has shape {tuple(t.shape)}, "
                                 f"the parameter has {tuple(p.shape)}")
            out.append(t.to(torch.float32))
    if missing:
        raise KeyError(f"{path} lacks {len(missing)} moment tensors, e.g. {missing[:3]}; "
                       f"it holds keys like {sorted(stored)[:3]}")
    return Moments(names, m, v)
