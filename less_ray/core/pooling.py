"""Pooling a model's hidden states into one vector per example (pure torch).

- mean: the mean over the example's tokens (the attention mask's);
- weighted_mean: token i of n weighted i / (1 + .. + n), later tokens more (SGPT, Muennighoff
  2022; RDS+'s `--pooling weighted_mean`): a causal model's later states have seen more of the text.
Positions count the example's own tokens, so right or left padding gives the embedding the example
has alone.
"""
from __future__ import annotations

import torch

POOLINGS = ("mean", "weighted_mean")


def pooled(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, T, H] hidden states and [B, T] mask (1 on the example's tokens) -> [B, H], not normalised."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    w = mask.to(hidden.dtype)
    if pooling == "weighted_mean":
        w = w.cumsum(1) * w  # 1-based position among the example's tokens
    return (hidden * w.unsqueeze(-1)).sum(1) / w.sum(1, keepdim=True)
