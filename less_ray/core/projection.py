"""Random projections of gradient features, generated block by block.

`RademacherProjector` multiplies by a seeded P x d matrix with entries +-1/sqrt(d) that is
never held whole: each block of rows is rebuilt on the fly from a counter-based hash, so
the matrix depends only on (seed, row, column) and is the same on CPU and on any GPU,
whatever the batch or block size. (TRAK's CUDA kernel, which LESS uses, gives different
matrices on GPUs with different SM counts.)

The scheme, which the tests pin against a pure-Python reference:
- one 32-bit word per (row, group of 32 columns): `mix32(row_key(seed, row) ^ group_key(group))`;
- bit k of the word for group g is the sign of column 32*g + k (1 -> +1, 0 -> -1).
On CPU the words are computed in numpy uint32, whose arithmetic wraps mod 2^32 by
definition (~50x faster than the int64 form); elsewhere in torch int64 holding 32-bit
values, masked with 0xFFFFFFFF, 32x32-bit products split into 16-bit halves so that no
int64 ever overflows (torch gives no wrap-around guarantee on signed overflow). The tests
check both forms against a pure-Python reference and against each other.

Several output dims come from one pass: the d-dim projection uses the first d columns
of the widest matrix, scaled by 1/sqrt(d). Each is a proper Rademacher projection; they
are nested, which costs one matrix generation and one matmul for all dims.

Projectors share a small interface (like TRAK's): `new_accumulator(batch, device)`,
`accumulate(acc, x_block, row_offset)` for rows [row_offset, row_offset + width) of the
full vector, `finish(acc) -> {dim: [batch, dim]}`, and `project(x)` for whole vectors.
"""
from __future__ import annotations

import functools
import math
import sys
from typing import Literal, Protocol, Sequence

import numpy as np
import torch

from .sign_lookup import STEP_ROWS, SignLookup

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # 2^32 / phi: spreads consecutive counters before mixing
_SEED_SALT = 0x5BD1E995
# how many matrix entries one generated block holds: GPUs want few large kernels; it changes
# speed only, never the matrix
_BLOCK_ENTRIES = {"cpu": 1 << 21, "cuda": 1 << 26}
# CPU tiles (rows, columns): generated and multiplied while still in cache; tall and narrow,
# so the GEMM's inner dimension stays long (measured on Zen3/AVX2, see bench/results)
_CPU_TILE = (2048, 256)
_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2^32 for h in [0, 2^32), without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (h * lo + (((h * hi) & 0xFFFF) << 16)) & MASK32


def mix32(h: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32 integer hash: a bijection of [0, 2^32) with strong avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> int:
    s = seed & 0xFFFFFFFFFFFFFFFF
    k = mix32(torch.tensor([(s & MASK32) ^ _SEED_SALT]))
    return int(mix32(k ^ (s >> 32)).item())


def row_keys(seed: int, rows: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row (rows: int64, any non-negative value)."""
    k = mix32(((rows & MASK32) ^ _seed_key(seed)) & MASK32)
    return mix32(k ^ (rows >> 32))


def group_keys(groups: torch.Tensor) -> torch.Tensor:
    return mix32((groups * _GOLDEN + 1) & MASK32)


def sign_words(seed: int, row_start: int, row_stop: int, n_groups: int,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """[rows, n_groups] int64 words; bit k of word [r, g] is the sign of column 32g + k."""
    if torch.device(device).type == "cpu":
        words = _words_np(_row_keys_np(seed, row_start, row_stop), _group_keys_np(n_groups))
        return torch.from_numpy(words.astype(np.int64))
    return _sign_words_torch(seed, row_start, row_stop, n_groups, device)


def _sign_words_torch(seed: int, row_start: int, row_stop: int, n_groups: int, device) -> torch.Tensor:
    rows = torch.arange(row_start, row_stop, dtype=torch.int64, device=device)
    groups = torch.arange(n_groups, dtype=torch.int64, device=device)
    return mix32(row_keys(seed, rows)[:, None] ^ group_keys(groups)[None, :])


# -- the same scheme in numpy uint32 (CPU) --------------------------------------------------

_C1, _C2 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def _mix32_np(h: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """mix32 in place on a uint32 array (products wrap mod 2^32)."""
    tmp = np.empty_like(h) if tmp is None else tmp
    np.right_shift(h, 16, out=tmp)
    h ^= tmp
    np.multiply(h, _C1, out=h)
    np.right_shift(h, 15, out=tmp)
    h ^= tmp
    np.multiply(h, _C2, out=h)
    np.right_shift(h, 16, out=tmp)
    h ^= tmp
    return h


def _row_keys_np(seed: int, row_start: int, row_stop: int) -> np.ndarray:
    rows = np.arange(row_start, row_stop, dtype=np.uint64)
    k = _mix32_np((rows & MASK32).astype(np.uint32) ^ np.uint32(_seed_key(seed)))
    k ^= (rows >> np.uint64(32)).astype(np.uint32)
    return _mix32_np(k)


@functools.lru_cache(maxsize=8)
def _group_keys_np(n_groups: int) -> np.ndarray:
    g = np.arange(n_groups, dtype=np.uint32)
    g *= np.uint32(_GOLDEN)
    g += np.uint32(1)
    out = _mix32_np(g)
    out.flags.writeable = False
    return out


def _words_np(rk: np.ndarray, gk: np.ndarray, out: np.ndarray | None = None,
              tmp: np.ndarray | None = None) -> np.ndarray:
    out = np.empty((len(rk), len(gk)), np.uint32) if out is None else out
    np.bitwise_xor(rk[:, None], gk[None, :], out=out)
    return _mix32_np(out, tmp)


@functools.lru_cache(maxsize=4)
def _byte_table_np(dtype) -> np.ndarray:
    return _byte_table(torch.device("cpu"), _TORCH_OF[dtype])[0].numpy()


_TORCH_OF = {v: k for k, v in _NP_DTYPES.items()}


class _CpuSigns:
    """Scratch buffers for CPU sign tiles, reused so that no tile allocates (and page-faults)."""

    def __init__(self):
        self.shape, self.bufs = None, None

    def tile(self, rk: np.ndarray, gk: np.ndarray, dtype) -> np.ndarray:
        """[rows, 32 * groups] signs (+-1) for row keys rk and group keys gk."""
        r, g = len(rk), len(gk)
        if self.shape != (r, g, dtype):
            self.shape = (r, g, dtype)
            self.bufs = (np.empty((r, g), np.uint32), np.empty((r, g), np.uint32),
                         np.empty((r, 4 * g, 8), dtype))
        words, tmp, signs = self.bufs
        _words_np(rk, gk, words, tmp)
        # 4 bytes per word (low byte first: columns 32g..32g+7), each looked up as 8 signs
        np.take(_byte_table_np(dtype), _le_bytes(words), axis=0, out=signs)
        return signs.reshape(r, 32 * g)


def _le_bytes(words: np.ndarray) -> np.ndarray:
    return (words if sys.byteorder == "little" else words.byteswap()).view(np.uint8)


@functools.lru_cache(maxsize=16)
def _byte_table(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """[256, 8] table whose row v holds the +-1 signs of v's bits (low bit first); byte shifts."""
    v = torch.arange(256, device=device)
    bits = (v[:, None] >> torch.arange(8, device=device)) & 1
    return (bits * 2 - 1).to(dtype), torch.tensor([0, 8, 16, 24], device=device)


def sign_block(seed: int, row_start: int, row_stop: int, n_cols: int,
               device: torch.device | str = "cpu", dtype=torch.float32) -> torch.Tensor:
    """[rows, n_cols] of +-1 (unscaled): rows [row_start, row_stop) of the sign matrix."""
    n_groups = -(-n_cols // 32)
    if torch.device(device).type == "cpu" and dtype in _NP_DTYPES:
        tile = _CpuSigns().tile(_row_keys_np(seed, row_start, row_stop), _group_keys_np(n_groups),
                                _NP_DTYPES[dtype])
        return torch.from_numpy(tile)[:, :n_cols]
    words = _sign_words_torch(seed, row_start, row_stop, n_groups, device)
    # 4 bytes per word, each looked up as 8 signs: one pass writes the block (the
    # bit-by-bit shift/and/convert takes ~3x longer on CPU)
    table, shifts = _byte_table(words.device, dtype)
    signs = torch.nn.functional.embedding((words[:, :, None] >> shifts) & 0xFF, table)
    return signs.reshape(row_stop - row_start, n_groups * 32)[:, :n_cols]


class Projector(Protocol):
    dim_in: int
    dims: list[int]

    def new_accumulator(self, batch: int, device) -> torch.Tensor: ...
    def accumulate(self, acc: torch.Tensor, x_block: torch.Tensor, row_offset: int) -> None: ...
    def finish(self, acc: torch.Tensor) -> dict[int, torch.Tensor]: ...


class _ProjectorBase:
    def project(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Whole vectors [batch, dim_in] -> {dim: [batch, dim]}."""
        acc = self.new_accumulator(x.shape[0], x.device)
        self.accumulate(acc, x, 0)
        return self.finish(acc)

    def _check(self, x_block: torch.Tensor, row_offset: int) -> None:
        if x_block.dim() != 2 or row_offset < 0 or row_offset + x_block.shape[1] > self.dim_in:
            raise ValueError(f"block of shape {tuple(x_block.shape)} at row {row_offset} does not fit "
                             f"a {self.dim_in}-dim input")


CpuKernel = Literal["lookup", "matmul"]


class RademacherProjector(_ProjectorBase):
    """x -> x @ R[:, :d] for each d in `dims`, R[i, j] = +-1/sqrt(d) from (seed, i, j).

    cpu_kernel: how float32 CPU inputs are multiplied: "lookup" (sign_lookup.py: the signs'
    bits index tables of partial sums; 1.5-2x faster on passes of 16-64 examples) or
    "matmul" (float sign tiles times x).
    block_rows: rows generated per step of the matmul kernels (None: by device). Neither
    changes results beyond float summation order.
    """

    def __init__(self, dim_in: int, dims: int | Sequence[int], seed: int = 0,
                 block_rows: int | None = None, cpu_kernel: CpuKernel = "lookup"):
        self.dim_in = int(dim_in)
        self.dims = sorted({int(d) for d in ([dims] if isinstance(dims, int) else dims)})
        if not self.dims or self.dims[0] < 1:
            raise ValueError(f"projection dims must be positive, got {dims}")
        self.seed = int(seed)
        self.block_rows = block_rows
        self.width = self.dims[-1]
        if cpu_kernel not in ("lookup", "matmul"):
            raise ValueError(f"cpu_kernel must be 'lookup' or 'matmul', got {cpu_kernel!r}")
        self.cpu_kernel = cpu_kernel
        self._cpu = _CpuSigns()
        self._lookup: SignLookup | None = None

    def _rows_per_block(self, device: torch.device) -> int:
        if self.block_rows:
            return self.block_rows
        return max(1, _BLOCK_ENTRIES.get(device.type, 1 << 24) // self.width)

    def _uses_lookup(self, device, dtype: torch.dtype) -> bool:
        return (self.cpu_kernel == "lookup" and torch.device(device).type == "cpu" and dtype == torch.float32
                and sys.byteorder == "little")

    def new_accumulator(self, batch: int, device) -> torch.Tensor:
        if self._uses_lookup(device, torch.float32):  # the lookup kernel adds column-major
            return torch.zeros(self.width, batch, dtype=torch.float32).T
        return torch.zeros(batch, self.width, device=device, dtype=torch.float32)

    def accumulate(self, acc: torch.Tensor, x_block: torch.Tensor, row_offset: int) -> None:
        self._check(x_block, row_offset)
        x_block = x_block.to(acc.dtype)
        if self._uses_lookup(acc.device, acc.dtype):
            return self._accumulate_lookup(acc, x_block, row_offset)
        if acc.device.type == "cpu" and acc.dtype in _NP_DTYPES:
            return self._accumulate_cpu(acc, x_block, row_offset)
        step = self._rows_per_block(acc.device)
        for s in range(0, x_block.shape[1], step):
            e = min(s + step, x_block.shape[1])
            signs = sign_block(self.seed, row_offset + s, row_offset + e, self.width, acc.device, acc.dtype)
            acc.addmm_(x_block[:, s:e], signs)

    def _accumulate_cpu(self, acc: torch.Tensor, x_block: torch.Tensor, row_offset: int) -> None:
        rows, cols = (self.block_rows, self.width) if self.block_rows else _CPU_TILE
        dtype = _NP_DTYPES[acc.dtype]
        gk = _group_keys_np(-(-self.width // 32))
        for s in range(0, x_block.shape[1], rows):
            e = min(s + rows, x_block.shape[1])
            rk, xs = _row_keys_np(self.seed, row_offset + s, row_offset + e), x_block[:, s:e]
            for c in range(0, self.width, cols):
                c_end = min(c + cols, self.width)
                tile = self._cpu.tile(rk, gk[c // 32:-(-c_end // 32)], dtype)
                acc[:, c:c_end].addmm_(xs, torch.from_numpy(tile)[:, :c_end - c])

    def _accumulate_lookup(self, acc: torch.Tensor, x_block: torch.Tensor, row_offset: int) -> None:
        batch = acc.shape[0]
        in_place = acc.T.is_contiguous()  # our own accumulator; a caller's [batch, width] one gets a sum added
        acc_t = acc.T if in_place else torch.zeros(self.width, batch)
        kernel = self._lookup
        if kernel is None or kernel.batch != batch:
            kernel = self._lookup = SignLookup(self.width, batch, torch.float32)
        gk = _group_keys_np(2 * kernel.n_blocks)
        for s in range(0, x_block.shape[1], STEP_ROWS):
            e = min(s + STEP_ROWS, x_block.shape[1])
            words, scratch = kernel.words_for(e - s)
            start = row_offset + s
            _words_np(_row_keys_np(self.seed, start, start + len(words)), gk, words, scratch)
            kernel.accumulate(acc_t, x_block[:, s:e])
        if not in_place:
            acc += acc_t.T

    def finish(self, acc: torch.Tensor) -> dict[int, torch.Tensor]:
        # row-major whatever the accumulator's layout (the lookup kernel's is column-major)
        return {d: (acc[:, :d] / math.sqrt(d)).contiguous() for d in self.dims}

    def matrix(self, dim: int, row_start: int = 0, row_stop: int | None = None,
               device="cpu") -> torch.Tensor:
        """Rows [row_start, row_stop) of the scaled dim_in x dim matrix (small cases: tests, audits)."""
        if dim not in self.dims:
            raise ValueError(f"dim {dim} is not one of {self.dims}")
        stop = self.dim_in if row_stop is None else row_stop
        return sign_block(self.seed, row_start, stop, dim, device) / math.sqrt(dim)


class IdentityProjector(_ProjectorBase):
    """No projection (audits): the feature is the full vector; its one dim is dim_in."""

    def __init__(self, dim_in: int):
        self.dim_in = int(dim_in)
        self.dims = [self.dim_in]

    def new_accumulator(self, batch: int, device) -> torch.Tensor:
        return torch.zeros(batch, self.dim_in, device=device, dtype=torch.float32)

    def accumulate(self, acc: torch.Tensor, x_block: torch.Tensor, row_offset: int) -> None:
        self._check(x_block, row_offset)
        acc[:, row_offset:row_offset + x_block.shape[1]] += x_block.to(acc.dtype)

    def finish(self, acc: torch.Tensor) -> dict[int, torch.Tensor]:
        return {self.dim_in: acc}
