"""A fast reader for the store's `features` column: values copied straight out of Parquet pages.

`write_shard` stores features PLAIN, uncompressed, without dictionary: every data page is
[page header][repetition levels][definition levels][the values, little-endian]. pyarrow decodes
such a column at ~300 MB/s (per-value level and FIXED_LEN_BYTE_ARRAY handling); copying the
value bytes with `readinto` runs at memory speed. `FeaturePages.open` checks the layout from the
file's metadata and page headers and returns None for anything else (compressed, dictionary,
other encodings), so callers fall back to pyarrow. `open` reads every page header up front:
values are checked to be present (no nulls) page by page and counted against rows x dim. Row
lengths are not re-checked: the Arrow type fixed_size_list guarantees dim values per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

_PLAIN, _RLE = 0, 3
_DATA_PAGE, _DICTIONARY_PAGE, _DATA_PAGE_V2 = 0, 2, 3
_DTYPES = {("FIXED_LEN_BYTE_ARRAY", 2): np.dtype("<f2"), ("FLOAT", 4): np.dtype("<f4")}


class _Truncated(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = out = 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _struct(buf: bytes, pos: int) -> tuple[dict[int, object], int]:
    """One Thrift compact-protocol struct: {field id: int | nested struct dict}; other values skipped."""
    fields: dict[int, object] = {}
    last = 0
    while True:
        if pos >= len(buf):
            raise _Truncated
        head = buf[pos]
        pos += 1
        kind = head & 0x0F
        if kind == 0:  # STOP
            return fields, pos
        delta = head >> 4
        if delta:
            fid = last + delta
        else:
            raw, pos = _varint(buf, pos)
            fid = _zigzag(raw)
        last = fid
        value, pos = _value(buf, pos, kind)
        fields[fid] = value


def _value(buf: bytes, pos: int, kind: int) -> tuple[object, int]:
    if kind in (1, 2):  # bool true / false, held in the type nibble
        return kind == 1, pos
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):  # i16 / i32 / i64
        raw, pos = _varint(buf, pos)
        return _zigzag(raw), pos
    if kind == 7:
        return None, pos + 8
    if kind == 8:  # binary
        n, pos = _varint(buf, pos)
        return None, pos + n
    if kind in (9, 10):  # list / set
        if pos >= len(buf):
            raise _Truncated
        head = buf[pos]
        pos += 1
        n, elem = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        for _ in range(n):
            _, pos = (pos + 1, pos + 1) if elem in (1, 2) else _value(buf, pos, elem)
        return None, pos
    if kind == 11:  # map
        n, pos = _varint(buf, pos)
        if n:
            kv = buf[pos]
            pos += 1
            for _ in range(n):
                _, pos = _value(buf, pos, kv >> 4)
                _, pos = _value(buf, pos, kv & 0x0F)
        return None, pos
    if kind == 12:
        return _struct(buf, pos)
    raise ValueError(f"thrift compact type {kind} unknown")


@dataclass
class _Chunk:
    offset: int
    size: int
    rows: int


class FeaturePages:
    """The `features` column of one Parquet file, read page by page into [rows, dim] blocks."""

    def __init__(self, path: Path, dim: int, dtype: np.dtype, chunks: list[_Chunk], max_rep: int, max_def: int):
        self.path, self.dim, self.dtype, self.chunks = path, dim, dtype, chunks
        self.max_rep, self.max_def = max_rep, max_def
        self.rows = sum(c.rows for c in chunks)

    @classmethod
    def open(cls, path: str | Path, column: str = "features") -> "FeaturePages | None":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        arrow_type = pf.schema_arrow.field(column).type
        if not (pa.types.is_fixed_size_list(arrow_type)
                and (pa.types.is_float16(arrow_type.value_type) or pa.types.is_float32(arrow_type.value_type))):
            return None
        leaves = [i for i in range(len(pf.schema)) if pf.schema.column(i).path.split(".")[0] == column]
        if len(leaves) != 1:
            return None
        leaf = pf.schema.column(leaves[0])
        dtype = _DTYPES.get((leaf.physical_type, leaf.length if leaf.physical_type == "FIXED_LEN_BYTE_ARRAY" else 4))
        if dtype is None or (dtype == np.float16) != pa.types.is_float16(arrow_type.value_type):
            return None
        md, chunks = pf.metadata, []
        for rg in range(md.num_row_groups):
            cc = md.row_group(rg).column(leaves[0])
            if (cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page or "PLAIN" not in cc.encodings
                    or any("DICTIONARY" in e for e in cc.encodings)):
                return None
            chunks.append(_Chunk(cc.data_page_offset, cc.total_compressed_size, md.row_group(rg).num_rows))
        reader = cls(Path(path), arrow_type.list_size, dtype, chunks, leaf.max_repetition_level,
                     leaf.max_definition_level)
        return reader if reader._scan() else None

    def _scan(self) -> bool:
        """Find each data page's values (file offset, byte length); False if a page is not PLAIN
        with RLE levels. Raises on nulls (a null list or value stores no bytes) or a bad count."""
        self.pages: list[tuple[int, int]] = []
        with open(self.path, "rb", buffering=0) as fh:
            for chunk in self.chunks:
                pos, end = chunk.offset, chunk.offset + chunk.size
                while pos < end:
                    header, body = self._header(fh, pos, end)
                    kind, size = header.get(1), header.get(3)
                    if kind == _DATA_PAGE:
                        dph = header.get(5, {})
                        if (dph.get(2) != _PLAIN or (self.max_rep and dph.get(4) != _RLE)
                                or (self.max_def and dph.get(3) != _RLE)):
                            return False
                        values, levels = dph.get(1), 0
                        for present in (self.max_rep, self.max_def):  # RLE levels: 4-byte length, then runs
                            if present:
                                fh.seek(body + levels)
                                levels += 4 + int.from_bytes(fh.read(4), "little")
                    elif kind == _DATA_PAGE_V2:
                        dph = header.get(8, {})
                        if dph.get(4) != _PLAIN:
                            return False
                        values, levels = dph.get(1), dph.get(5, 0) + dph.get(6, 0)
                    else:
                        return False
                    if size is None or values is None or size - levels != values * self.dtype.itemsize:
                        raise ValueError(f"{self.path}: page at byte {pos} holds nulls or is malformed "
                                         f"({values} values, {None if size is None else size - levels} value bytes)")
                    self.pages.append((body + levels, size - levels))
                    pos = body + size
        total = sum(n for _, n in self.pages) // self.dtype.itemsize
        if total != self.rows * self.dim:
            raise ValueError(f"{self.path}: {total} feature values for {self.rows} rows x {self.dim}")
        return True

    def _header(self, fh, pos: int, end: int) -> tuple[dict, int]:
        look = 256
        while True:
            fh.seek(pos)
            buf = fh.read(min(look, end - pos))
            try:
                header, n = _struct(buf, 0)
                return header, pos + n
            except (_Truncated, IndexError):
                if look >= end - pos:
                    raise ValueError(f"{self.path}: truncated page header at byte {pos}") from None
                look *= 4

    def blocks(self, rows: int) -> Iterator[np.ndarray]:
        """[rows, dim] blocks in file order (the last may be shorter). Each block is a view of one
        buffer reused for the next: use it before advancing."""
        buf = np.empty(rows * self.dim, self.dtype)
        dest = memoryview(buf.view(np.uint8))
        fill = 0
        with open(self.path, "rb", buffering=0) as fh:
            for start, length in self.pages:
                fh.seek(start)
                while length:
                    n = fh.readinto(dest[fill:fill + min(length, len(dest) - fill)])
                    if not n:
                        raise ValueError(f"{self.path}: file ends inside a page")
                    fill, length = fill + n, length - n
                    if fill == len(dest):
                        yield buf.reshape(rows, self.dim)
                        fill = 0
        if fill:
            yield buf[:fill // self.dtype.itemsize].reshape(-1, self.dim)
