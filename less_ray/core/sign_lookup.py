"""x @ S for a +-1 sign matrix S by table lookup instead of a matmul (the CPU kernel).

Split the rows of S into chunks of 8. For one chunk c, column j of S holds one of 256 sign
patterns p(c, j), so (x @ S)[:, j] = sum_c T_c[p(c, j)], where the table T_c[p] holds the
256 signed sums of the chunk's 8 rows of x (a small matmul: 256 x 8 signs times x).
The sum over chunks is one `embedding_bag` call (a bag per column, one index per chunk):
about B/8 adds per matrix entry instead of the matmul's 2B flops, and S is never expanded
into floats; its bits are used as generated.

S arrives as the projection scheme's 32-bit sign words [rows, columns/32] (bit k of word
[r, g] is the sign of column 32g + k). A pattern needs the bits of 8 *rows* for one
column, so each 64 x 64 bit block is transposed (six rounds of masked shifts on uint64,
vectorised over all blocks): afterwards byte c of the uint64 for column j packs rows
8c..8c+7, which is exactly the pattern index, already laid out one bag per column.
Little-endian byte order is assumed (the caller falls back to the matmul elsewhere).

The bit work is paid once per pass whatever the batch; the tables and gathers grow with it,
and beyond ~64 examples a bag's tables (64 chunks x 256 x batch floats) fall out of cache and
each example costs more (bench/profile_lookup_kernel.py). So a larger batch is served in
sub-batches of SUB_BATCH examples that share one set of pattern indices.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# (shift, mask of the bit positions whose `shift` bit is clear): the six rounds of a 64 x 64
# bit-matrix transpose; each swaps the off-diagonal blocks of size `shift`
_ROUNDS = [(np.uint64(s), np.uint64(sum(1 << c for c in range(64) if not c & s)))
           for s in (32, 16, 8, 4, 2, 1)]
CHUNKS_PER_BAG = 64  # chunks of 8 rows summed by one embedding_bag call
BAG_ROWS = 8 * CHUNKS_PER_BAG
BAGS_PER_STEP = 8    # embedding_bag calls served by one generation of sign words
STEP_ROWS = BAG_ROWS * BAGS_PER_STEP
SUB_BATCH = 64  # examples per table: larger tables thrash the cache during the gathers


class SignLookup:
    """Scratch buffers for one (column count, batch, dtype): the caller writes the sign words
    of up to STEP_ROWS consecutive rows into `words_for(rows)[0]`, then `accumulate` adds x @ S."""

    def __init__(self, n_cols: int, batch: int, dtype: torch.dtype):
        self.n_blocks = -(-n_cols // 64)  # 64-column blocks, two words each
        self.n_cols, self.batch = n_cols, batch
        self.words = np.empty((STEP_ROWS, 2 * self.n_blocks), np.uint32)
        self.scratch = np.empty_like(self.words)
        self._bits = np.empty((BAGS_PER_STEP, self.n_blocks, 64, CHUNKS_PER_BAG // 8), np.uint64)
        self._tmp = np.empty(self._bits.size // 2, np.uint64)
        self._index = np.empty((self.n_blocks * 64, CHUNKS_PER_BAG), np.int32)
        self._offsets = np.arange(CHUNKS_PER_BAG, dtype=np.int32) * 256
        self.sub = min(batch, SUB_BATCH)
        self._x = torch.zeros(8 * CHUNKS_PER_BAG, self.sub, dtype=dtype)
        # tables for a full sub-batch and for the last, partial one (a fresh one per bag would page-fault)
        self._tables = {n: torch.empty(CHUNKS_PER_BAG, 256, n, dtype=dtype) for n in {self.sub, batch % self.sub} if n}
        self._patterns_pm = (((torch.arange(256)[:, None] >> torch.arange(8)) & 1) * 2 - 1).to(dtype)

    def words_for(self, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """(words buffer, scratch of its shape) for n_rows <= STEP_ROWS rows, in whole bags."""
        n = -(-n_rows // BAG_ROWS) * BAG_ROWS
        return self.words[:n], self.scratch[:n]

    def accumulate(self, acc_t: torch.Tensor, x: torch.Tensor) -> None:
        """acc_t [n_cols, batch] += (x @ S).T for x [batch, rows <= STEP_ROWS], the rows' sign
        words having been written into `words_for(rows)`."""
        n_bags = -(-x.shape[1] // BAG_ROWS)
        patterns = self._patterns(n_bags)
        for b in range(n_bags):
            r0, r1 = b * BAG_ROWS, min((b + 1) * BAG_ROWS, x.shape[1])
            np.add(patterns[b], self._offsets, out=self._index)
            index = torch.from_numpy(self._index)[:self.n_cols]
            for e0 in range(0, self.batch, self.sub):
                e1 = min(e0 + self.sub, self.batch)
                xs = self._x[:, :e1 - e0]
                if r1 - r0 < BAG_ROWS:
                    xs.zero_()
                xs[:r1 - r0] = x[e0:e1, r0:r1].T
                table = self._fill_table(xs)
                # column tiles keep embedding_bag's output small (no fresh large allocation per call)
                for c in range(0, self.n_cols, 2048):
                    acc_t[c:c + 2048, e0:e1] += F.embedding_bag(index[c:c + 2048], table, mode="sum")

    def _patterns(self, n_bags: int) -> np.ndarray:
        """[n_bags, n_blocks * 64, CHUNKS_PER_BAG] uint8: [b, j, c] = the pattern of column j
        over rows 8c..8c+7 of bag b's 512 rows (bit k = row 8c + k)."""
        nb, ni = self.n_blocks, CHUNKS_PER_BAG // 8
        # uint64 [bag, 64-row block R, row i, column block m] -> [bag, m, i, R]
        w = self.words[:n_bags * BAG_ROWS].view(np.uint64).reshape(n_bags, ni, 64, nb)
        bits = self._bits[:n_bags]
        np.copyto(bits, w.transpose(0, 3, 2, 1))
        for shift, mask in _ROUNDS:
            s = int(shift)
            pairs = bits.reshape(n_bags * nb, 64 // (2 * s), 2, s * ni)
            lo, hi = pairs[:, :, 0], pairs[:, :, 1]
            t = self._tmp[:lo.size].reshape(lo.shape)
            np.right_shift(lo, shift, out=t)
            t ^= hi
            t &= mask
            hi ^= t
            t <<= shift
            lo ^= t
        # now bits[bag, m, j, R] has bit i of column 64m + j in 64-row block R: its bytes are
        # the 8 chunks of that block, so [bag, column, chunk] is a plain view
        return bits.view(np.uint8).reshape(n_bags, nb * 64, CHUNKS_PER_BAG)

    def _fill_table(self, x: torch.Tensor) -> torch.Tensor:
        """[chunks * 256, n] for x [chunks * 8, n]: entry p of chunk c = sum_k (+1 if bit k of p
        else -1) * x[8c + k]."""
        n = x.shape[1]
        table = self._tables[n]
        torch.matmul(self._patterns_pm, x.view(CHUNKS_PER_BAG, 8, n), out=table)  # [256, 8] @ [chunks, 8, n]
        return table.view(CHUNKS_PER_BAG * 256, n)
