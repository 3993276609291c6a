"""What a stage's actors need from Ray: the extraction actor's memory model and shard sizing (what to
tell the user when Ray takes memory away lives with the shard executor, shards.explain_actor_failure).

An extraction actor holds the model, the adapter with its moments, a batch's activations and
the per-example gradients waiting for projection. Declaring that to Ray (`memory=`) makes Ray
start no more actors on a node than its memory holds, instead of starting them all and letting
its memory monitor kill one (which a user saw only as "The actor was restarted", forever).
The activation term is set so that SmolLM2-135M at batch_tokens 4096 comes out at ~9 GiB, above
the 7-8 GB its actors had reached when the monitor killed one; erring high costs parallelism,
not a crash (`actor_memory_gb` overrides the estimate).
"""
from __future__ import annotations

import math
from typing import Any

GiB = 2 ** 30
PROCESS_BASE = int(1.2 * GiB)  # torch + transformers + peft + Ray imported, before any model
ACTIVATION_BYTES_PER_HIDDEN = 64  # per token, layer and hidden unit: saved activations for the backward
LOGIT_BYTES_PER_VOCAB = 12  # per token and vocabulary entry: logits, their softmax and its gradient


def meta_model(base_model: str):
    """A local model built from its config on the meta device: its shapes, no weights read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(base_model, local_files_only=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def model_shape(base_model: str) -> dict[str, int]:
    """Parameter count, layers, hidden size and vocabulary of a local model, from its config alone."""
    model = meta_model(base_model)
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    return {"params": int(n_params), "layers": int(config.num_hidden_layers), "hidden": int(config.hidden_size),
            "vocab": int(config.vocab_size)}


def batch_tokens_bound(cfg: Any) -> int:
    """The most padded tokens one backward pass holds."""
    rows = cfg.batch_size * cfg.max_seq_length
    return min(rows, cfg.batch_tokens) if cfg.batch_tokens else rows


def extract_memory_bytes(cfg: Any, shape: dict[str, int], lora_params: int) -> int:
    """An extraction actor's peak memory: base process, weights, adapter + moments, activations
    of the largest batch, and the gradients held for projection."""
    weight_bytes = 2 if getattr(cfg, "precision", "fp32") != "fp32" else 4
    tokens = batch_tokens_bound(cfg)
    activations = tokens * (shape["layers"] * shape["hidden"] * ACTIVATION_BYTES_PER_HIDDEN
                            + shape["vocab"] * LOGIT_BYTES_PER_VOCAB)
    held = cfg.batch_size
    if getattr(cfg, "projection", "") == "rademacher":  # gradients wait for a shared projection pass
        from .core.projectors import projection_batch
        held = projection_batch(cfg.projection, cfg.batch_size, cfg.projection_batch, cfg.projection_buffer_gb,
                                lora_params)
    return int(PROCESS_BASE + shape["params"] * weight_bytes + lora_params * 4 * 4 + activations
               + held * lora_params * 4)


def lora_param_count(cfg: Any, shape: dict[str, int]) -> int:
    """The adapter's size, read from the checkpoint's safetensors header (no tensor is loaded)."""
    from pathlib import Path

    from safetensors import safe_open
    with safe_open(str(Path(cfg.checkpoint) / "adapter_model.safetensors"), "pt") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def estimate_extract_memory(cfg: Any) -> int:
    shape = model_shape(cfg.base_model)
    return extract_memory_bytes(cfg, shape, lora_param_count(cfg, shape))


def auto_shard_rows(n_rows: int, max_actors: int, cap: int = 2048) -> int:
    """Rows per shard so that a pool spreads over every allowed actor (at most `cap`, the unit
    of resumption; at least 1)."""
    return max(1, min(cap, math.ceil(n_rows / max(1, max_actors))))
