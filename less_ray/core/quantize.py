"""Compact feature codes: int8, int4 and 1-bit signs with one float32 scale per row.

A row x is coded as small integers q (int8: round(127·x/max|x|); int4: round(7·x/max|x|), two per
byte; sign: one bit per value, x >= 0) and one scale s = ‖x‖ / ‖q‖, so the decoded row s·q points
along q and keeps x's L2 norm: a unit row decodes to a unit row, and the cosine scoring reads
is the cosine of the quantized direction. A zero row is stored as q = 0, s = 0 and decodes to
zeros. QLESS (arXiv 2502.01703) quantizes LESS's projected gradients this way (absmax, per row)
and finds 1-bit signs keep most of LESS's selection quality at 1/16 of float16's bytes.

The float dtypes pass through unchanged (`encode` returns the values cast, scale None).
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = ("float16", "float32")
CODED_DTYPES = ("int8", "int4", "sign")
DTYPES = FLOAT_DTYPES + CODED_DTYPES
_LEVELS = {"int8": 127, "int4": 7}


def check_dtype(dtype: str, where: str = "dtype") -> str:
    if dtype not in DTYPES:
        raise ValueError(f"{where} must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return dtype


def stored_width(dtype: str, dim: int) -> int:
    """Values per stored row: dim, except packed codes (int4: 2 per byte, sign: 8 per byte)."""
    return {"int4": -(-dim // 2), "sign": -(-dim // 8)}.get(dtype, dim)


def row_bytes(dtype: str, dim: int) -> int:
    """Bytes of one row's features on disk (the scale included)."""
    if dtype in FLOAT_DTYPES:
        return dim * np.dtype(dtype).itemsize
    return stored_width(dtype, dim) + 4


def stored_numpy_dtype(dtype: str) -> np.dtype:
    return np.dtype({"int8": np.int8, "int4": np.uint8, "sign": np.uint8}.get(dtype, dtype))


def encode(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """([n, stored_width] values, [n] float32 scale or None) for [n, d] float rows."""
    check_dtype(dtype)
    x = np.asarray(x, dtype=np.float32)
    if dtype in FLOAT_DTYPES:
        return x.astype(dtype), None
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if dtype == "sign":
        bits = x >= 0
        q_norm = np.sqrt(x.shape[1]) if x.shape[1] else 1.0
        scale = np.where(norm > 0, norm / q_norm, 0.0).astype(np.float32)
        return np.packbits(bits, axis=1), scale
    levels = _LEVELS[dtype]
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    q = np.rint(x * (levels / np.where(amax > 0, amax, 1.0))[:, None]).astype(np.int8)
    q_norm = np.sqrt(np.einsum("ij,ij->i", q, q, dtype=np.float64))
    scale = np.where(q_norm > 0, norm / np.where(q_norm > 0, q_norm, 1.0), 0.0).astype(np.float32)
    if dtype == "int8":
        return q, scale
    if q.shape[1] % 2:  # an odd dim: a zero nibble fills the last byte
        q = np.pad(q, ((0, 0), (0, 1)))
    u = (q + 8).astype(np.uint8)
    return u[:, 0::2] | (u[:, 1::2] << 4), scale


def decode(values: np.ndarray, scale: np.ndarray | None, dtype: str, dim: int) -> np.ndarray:
    """[n, dim] float32 rows from what `encode` returned."""
    if dtype in FLOAT_DTYPES:
        return np.asarray(values).astype(np.float32, copy=False)
    n = len(values)
    if dtype == "int8":
        q = np.asarray(values, dtype=np.float32)
    elif dtype == "int4":  # low nibble first; offset 8
        q = np.empty((n, values.shape[1], 2), np.float32)
        q[:, :, 0] = values & 15
        q[:, :, 1] = values >> 4
        q = q.reshape(n, -1)[:, :dim] - 8.0
    else:  # sign: bit 1 -> +1, bit 0 -> -1
        q = np.unpackbits(values, axis=1, count=dim).astype(np.float32)
        q *= 2.0
        q -= 1.0
    return q * np.asarray(scale, dtype=np.float32)[:, None]
