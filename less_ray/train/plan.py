"""What every worker trains on at every step, and at what learning rate.

The order is a pure function of (seed, epoch, n, sizes), so a resumed run replays exactly
the epochs it lost, on any number of restarts:
- epoch e (1-based) visits `permutation(n)` drawn from numpy's PCG64 seeded with [seed, e];
- an epoch has ceil(n / B) optimizer steps, B = per_device x accumulation x workers; the
  last step is filled by wrapping around to the start of the permutation (as PyTorch's
  DistributedSampler pads), so every example is trained on every epoch and all ranks run
  the same number of micro-steps (the collectives need that);
- in step s, micro-step a, rank r takes the `per_device` examples at offset
  (s*B + (a*workers + r) * per_device) of the (wrapped) permutation.
Schedules follow HF's: warmup = ceil(ratio * total) steps rising linearly from 0, then linear
decay to 0 at `total`; optimizer step i (0-based) uses lr(i).
"""
from __future__ import annotations

import math

import numpy as np


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch: int) -> int:
    return math.ceil(n / batch)


def micro_batches(n: int, seed: int, epoch: int, per_device: int, accumulation: int,
                  world: int, rank: int) -> list[list[int]]:
    """This rank's micro-batches of `epoch`, in order (accumulation of them per optimizer step)."""
    batch = per_device * accumulation * world
    steps = steps_per_epoch(n, batch)
    order = np.resize(epoch_permutation(n, seed, epoch), steps * batch)  # resize wraps around
    out = []
    for s in range(steps):
        for a in range(accumulation):
            start = s * batch + (a * world + rank) * per_device
            out.append(order[start:start + per_device].tolist())
    return out


def warmup_steps(total: int, ratio: float) -> int:
    return math.ceil(total * ratio)


def lr_factor(step: int, total: int, warmup: int, kind: str = "linear") -> float:
    """Multiplier of the peak lr at optimizer step `step` (HF's linear / constant-with-warmup)."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    if kind != "linear":
        raise ValueError(f"unknown scheduler {kind!r}; expected linear or constant")
    return max(0.0, (total - step) / max(1, total - warmup))


def accumulation_steps(effective_batch: int, per_device: int, world: int) -> int:
    per_step = per_device * world
    if effective_batch % per_step:
        raise ValueError(f"effective_batch_size {effective_batch} is not a multiple of "
                         f"per_device_batch_size x num_workers = {per_step}")
    return effective_batch // per_step
