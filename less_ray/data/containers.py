"""The bytes of a data file, by what the file is rather than what it is called: gzip-compressed
files are decompressed whatever their name, a UTF-8 byte-order mark at the start is dropped,
and a damaged container (a cut gzip stream) is a `ContainerError` naming the line it stops at.

Lines (JSONL, TSV), the whole text (a JSON array) and Parquet rows are read here; what a line or
an element holds is decided in json_text.py and rows.py.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any, Iterator

_GZIP_MAGIC = b"\x1f\x8b"
BOM = b"\xef\xbb\xbf"
_GZIP_ERRORS = (EOFError, OSError, zlib.error)  # gzip.BadGzipFile is an OSError


class ContainerError(Exception):
    """The file itself cannot be read further (damaged gzip stream, unclosed JSON array)."""

    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


def strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def open_binary(path: Path):
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw bytes without newline, whether it ended in a newline).

    gzip-compressed files (magic bytes 1f 8b) are decompressed, whatever their name; a
    UTF-8 byte-order mark at the start of line 1 is dropped."""
    n = 0
    with open_binary(path) as fh:
        it = iter(fh)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except _GZIP_ERRORS as e:
                raise ContainerError(n + 1, f"gzip-compressed file is damaged or truncated after line {n} "
                                            f"({type(e).__name__}: {e})") from None
            n += 1
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            ended = raw.endswith(b"\n")
            yield n, raw.rstrip(b"\r\n"), ended


def read_all(path: Path) -> bytes:
    try:
        with open_binary(path) as fh:
            data = fh.read()
    except _GZIP_ERRORS as e:
        raise ContainerError(1, f"gzip-compressed file is damaged or truncated ({type(e).__name__}: {e})") from None
    return data[len(BOM):] if data.startswith(BOM) else data


def is_json_array(path: Path) -> bool:
    """A `.json` (or `.json.gz`) file whose first non-blank character is '['."""
    if not strip_gz(path.name.lower()).endswith(".json"):
        return False
    try:
        with open_binary(path) as fh:
            head = fh.read(4096)
    except _GZIP_ERRORS:
        return False
    head = head[len(BOM):] if head.startswith(BOM) else head
    return head.lstrip()[:1] == b"["


def iter_parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row
