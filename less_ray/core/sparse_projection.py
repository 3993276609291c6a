"""Sparse Johnson-Lindenstrauss projection (CountSketch for s = 1), from a counter-based hash.

For a d-dim projection with s nonzeros per input coordinate (Kane & Nelson's block
construction, as GraSS / sjlt use): the d outputs are cut into s contiguous blocks
[floor(j d / s), floor((j + 1) d / s)); input coordinate i adds sign_j(i) * x_i / sqrt(s) to one
bucket of every block j. Bucket and sign come from one 32-bit word
    h_j(i) = mix32(mix32(lo32(i) ^ K_j) ^ (i >> 32)),  K_j = mix32(seed_key(seed) ^ group_key(64 d + j))
(the Rademacher projector's mix32 and keys, core/projection.py): sign = +1 if the low bit is 1 else -1,
bucket = block start + ((h >> 1) * block size) >> 31. So the matrix is never stored or
generated: each coordinate costs s hashes and s scattered adds, the same on CPU and any GPU
for any batch or block size, and E[<Sx, Sy>] = <x, y> exactly (each coordinate lands in s
distinct buckets with weight 1/s per square; cross terms have independent zero-mean signs).
Several dims are independent sketches (a dim's sketch depends on (seed, d, s) only, not on
which other dims are asked for).

Accumulation: the accumulator holds, per dim, 2d columns, the positive-sign buckets then the
negative ones, so a block is scattered as it is (`index_add_`, no sign multiply); `finish`
subtracts the halves. Each step of rows is one 2-D `index_add_` along the columns, on CPU and
GPU alike: ~1.1 ns per example and coordinate on this CPU at any batch size, as fast as
`scatter_add_` (bench/results/sparse_kernels_cpu.txt, run 3). Its indices must be int64: with
int32 ones torch takes a path that pays per index, not per element (7 ns at 16 rows, 57 ns at
one row, measured), which made the projection 14% of extraction in bench_peers run 3. The hashed
indices are cached per actor within `index_cache_mb` (int64: 8 bytes per coordinate and nonzero,
118 MB for SmolLM2's LoRA at s = 1), so the hash runs once; the cache is derived and refilled
identically.
"""
from __future__ import annotations

import functools
import math
from typing import Literal, Sequence

import numpy as np
import torch

from .projection import MASK32, _mix32_np, _ProjectorBase, _seed_key, group_keys, mix32

# rows hashed per step: bounds the index buffers (s x rows int64), changes nothing else
_STEP_ROWS = 1 << 18
MAX_S = 64
Kernel = Literal["scatter", "rows", "index_add"]


def _block_bounds(dim: int, s: int) -> list[tuple[int, int]]:
    return [(j * dim // s, (j + 1) * dim // s) for j in range(s)]


@functools.lru_cache(maxsize=256)
def _hash_keys(seed: int, dim: int, s: int) -> tuple[int, ...]:
    """One 32-bit key K_j per (seed, dim, j): mix32(seed key ^ group key(64 dim + j))."""
    g = group_keys(torch.arange(s, dtype=torch.int64) + 64 * dim)
    return tuple(int(k) for k in mix32(g ^ _seed_key(seed)).tolist())


def sparse_words(seed: int, dim: int, s: int, row_start: int, row_stop: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """[s, rows] int64 holding the 32-bit words h_j(i) = mix32(mix32(lo32(i) ^ K_j) ^ (i >> 32))."""
    keys = _hash_keys(seed, dim, s)
    rows = torch.arange(row_start, row_stop, dtype=torch.int64, device=device)
    lo, hi = rows & MASK32, rows >> 32
    return torch.stack([mix32(mix32(lo ^ k) ^ hi) for k in keys])


def sparse_indices(seed: int, dim: int, s: int, row_start: int, row_stop: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """[s, rows] int64 column indices into a 2*dim-wide accumulator: bucket (positive sign)
    or dim + bucket (negative sign), for input rows [row_start, row_stop)."""
    bounds = _block_bounds(dim, s)
    if torch.device(device).type == "cpu":
        return torch.from_numpy(_indices_np(seed, dim, s, row_start, row_stop, bounds))
    h = sparse_words(seed, dim, s, row_start, row_stop, device)
    out = torch.empty_like(h)
    for j, (lo, hi) in enumerate(bounds):
        out[j] = (((h[j] >> 1) * (hi - lo)) >> 31) + lo + dim * (1 - (h[j] & 1))
    return out


def _indices_np(seed, dim, s, row_start, row_stop, bounds) -> np.ndarray:
    """The same in numpy uint32 arithmetic (wraps mod 2^32; ~an order of magnitude faster on CPU)."""
    n = row_stop - row_start
    rows = np.arange(row_start, row_stop, dtype=np.uint64)
    lo32 = (rows & np.uint64(MASK32)).astype(np.uint32)
    hi32 = (rows >> np.uint64(32)).astype(np.uint32) if row_stop > (1 << 32) else None
    out = np.empty((s, n), np.int64)
    h, tmp, t64 = np.empty(n, np.uint32), np.empty(n, np.uint32), np.empty(n, np.int64)
    for j, ((blo, bhi), k) in enumerate(zip(bounds, _hash_keys(seed, dim, s))):
        np.bitwise_xor(lo32, np.uint32(k), out=h)
        _mix32_np(h, tmp)
        if hi32 is not None:
            h ^= hi32
        _mix32_np(h, tmp)
        o = out[j]
        np.right_shift(h, 1, out=tmp)
        np.multiply(tmp, bhi - blo, out=o, dtype=np.int64)  # < 2^31 * 2^26
        np.right_shift(o, 31, out=o)
        np.bitwise_and(h, 1, out=tmp)
        np.multiply(tmp, -dim, out=t64, dtype=np.int64)  # sign bit 0 -> the negative half
        o += t64
        o += blo + dim
    return out


class SparseJLProjector(_ProjectorBase):
    """x -> S_d x for each d in dims: s hashed (bucket, sign) pairs per input coordinate, 1/sqrt(s).

    Cheap per block (no matrix generation to share), so examples need not be projected
    together: `grouping_helps` tells core.grads to project each batch as its blocks arrive.
    """

    grouping_helps = False

    def __init__(self, dim_in: int, dims: int | Sequence[int], seed: int = 0, s: int = 1,
                 step_rows: int | None = None, index_cache_mb: float = 1024.0,
                 kernel: Kernel | None = None):
        self.dim_in = int(dim_in)
        self.dims = sorted({int(d) for d in ([dims] if isinstance(dims, int) else dims)})
        if not self.dims or self.dims[0] < 1:
            raise ValueError(f"projection dims must be positive, got {dims}")
        if not 1 <= int(s) <= min(MAX_S, self.dims[0]):
            raise ValueError(f"sjlt s must be in [1, min({MAX_S}, smallest dim)], got {s}")
        if kernel not in (None, "scatter", "rows", "index_add"):
            raise ValueError(f"unknown sparse kernel {kernel!r}")
        self.seed, self.s = int(seed), int(s)
        self.step_rows = int(step_rows or _STEP_ROWS)
        self.kernel = kernel
        self.offsets = {}
        off = 0
        for d in self.dims:
            self.offsets[d] = off
            off += 2 * d
        self.width = off
        # the hashed indices of rows already seen (4 bytes per row and nonzero): a derived cache,
        # refilled identically on a miss; within the budget the hash runs once per actor
        self._cache: dict[tuple, torch.Tensor] = {}
        self._cache_left = int(index_cache_mb * 2 ** 20)

    def indices(self, row_start: int, row_stop: int, device="cpu") -> torch.Tensor:
        """[len(dims) * s, rows] accumulator columns of rows [row_start, row_stop)."""
        device = torch.device(device)
        key = (row_start, row_stop, str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        parts = [sparse_indices(self.seed, d, self.s, row_start, row_stop, device) + self.offsets[d]
                 for d in self.dims]
        idx = parts[0] if len(parts) == 1 else torch.cat(parts)  # int64: int32 is index_add_'s slow path
        if idx.numel() * idx.element_size() <= self._cache_left:
            self._cache[key] = idx
            self._cache_left -= idx.numel() * idx.element_size()
        return idx

    def new_accumulator(self, batch: int, device) -> torch.Tensor:
        return torch.zeros(batch, self.width, device=device, dtype=torch.float32)

    def accumulate(self, acc: torch.Tensor, x_block: torch.Tensor, row_offset: int) -> None:
        self._check(x_block, row_offset)
        x_block = x_block.to(acc.dtype)
        kernel = self.kernel or "index_add"  # with int64 indices as fast as scatter_add_ (module docstring)
        batch = acc.shape[0]
        for a in range(0, x_block.shape[1], self.step_rows):
            b = min(a + self.step_rows, x_block.shape[1])
            idx = self.indices(row_offset + a, row_offset + b, acc.device)
            xs = x_block[:, a:b]
            for row in idx:
                if kernel == "scatter":
                    acc.scatter_add_(1, row.expand(batch, -1), xs)
                elif kernel == "rows":
                    for e in range(batch):
                        acc[e].index_add_(0, row, xs[e])
                else:
                    acc.index_add_(1, row, xs)

    def finish(self, acc: torch.Tensor) -> dict[int, torch.Tensor]:
        scale = 1.0 / math.sqrt(self.s)
        out = {}
        for d in self.dims:
            o = self.offsets[d]
            out[d] = ((acc[:, o:o + d] - acc[:, o + d:o + 2 * d]) * scale).contiguous()
        return out

    def matrix(self, dim: int, row_start: int = 0, row_stop: int | None = None,
               dtype=torch.float64) -> torch.Tensor:
        """Rows [row_start, row_stop) of the dense dim_in x dim matrix (small cases: tests, audits)."""
        if dim not in self.dims:
            raise ValueError(f"dim {dim} is not one of {self.dims}")
        stop = self.dim_in if row_stop is None else row_stop
        idx = sparse_indices(self.seed, dim, self.s, row_start, stop)
        m = torch.zeros(stop - row_start, 2 * dim, dtype=dtype)
        m.scatter_add_(1, idx.T.contiguous(), torch.ones(stop - row_start, self.s, dtype=dtype))
        return (m[:, :dim] - m[:, dim:]) / math.sqrt(self.s)
