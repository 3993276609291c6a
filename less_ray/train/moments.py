"""Full (un-partitioned) fp32 AdamW moments and weights of the trainable parameters.

Where DeepSpeed keeps them, per ZeRO stage:
- ZeRO 0, fp32: the client AdamW itself is the optimizer; `optimizer.state[p]` holds full
  `exp_avg` / `exp_avg_sq` for the module's own parameter `p`, identical on every rank.
- ZeRO 1/2 (and bf16's BF16_Optimizer): each rank's optimizer state lives on a flat fp32
  partition; every parameter carries `_hp_mapping` to its fragment (None on ranks that own
  none of it). `safe_get_full_optimizer_state` writes the local fragment into a zero buffer
  and all-reduces it over the data-parallel group.
- ZeRO 3: parameters carry `ds_id`; the same call all-gathers the fp32 state partitions.
The ZeRO 1-3 calls are collectives: every rank must make them in the same order, so every
rank walks `named_parameters()` and only rank 0 writes the result.
"""
from __future__ import annotations

import torch

MOMENT_KEYS = ("exp_avg", "exp_avg_sq")


def trainable_named_parameters(module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _is_deepspeed_managed(p) -> bool:
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def _full_state(engine, p, key: str) -> torch.Tensor:
    if _is_deepspeed_managed(p):
        from deepspeed.utils import safe_get_full_optimizer_state
        t = safe_get_full_optimizer_state(p, key)
    else:
        if engine.optimizer is not engine.basic_optimizer:
            raise NotImplementedError(f"cannot map {type(engine.optimizer).__name__}'s state back to "
                                      "parameters; use ZeRO 1-3 or fp32")
        t = engine.optimizer.state[p][key]
    return t.detach().to("cpu", torch.float32).reshape(p.ds_shape if hasattr(p, "ds_shape") else p.shape)


def gather_moments(engine) -> dict[str, torch.Tensor]:
    """{"<name>.exp_avg": m, "<name>.exp_avg_sq": v} for every trainable parameter (collective)."""
    out = {}
    for name, p in trainable_named_parameters(engine.module):
        for key in MOMENT_KEYS:
            out[f"{name}.{key}"] = _full_state(engine, p, key).clone()
    return out


def gather_weights(engine) -> dict[str, torch.Tensor]:
    """Full fp32 values of the trainable parameters: the optimizer's master copy where
    DeepSpeed keeps one (ZeRO 1-3, bf16), else the parameter itself (collective)."""
    from deepspeed.utils import safe_get_full_fp32_param
    out = {}
    for name, p in trainable_named_parameters(engine.module):
        t = safe_get_full_fp32_param(p) if _is_deepspeed_managed(p) else p.data
        shape = p.ds_shape if hasattr(p, "ds_shape") else p.shape
        out[name] = t.detach().to("cpu", torch.float32).reshape(shape).clone()
    return out
