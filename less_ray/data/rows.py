"""The rows of one data file, whatever its container: JSONL (or TSV) lines, the elements of a
JSON array, Parquet rows. Each row comes parsed, or as the RecordError that rejects it, with the
line it is on; whether it is a valid record is io.py's business."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .containers import iter_lines, iter_parquet_rows, is_json_array, strip_gz
from .formats import InputFormat
from .json_text import RAW_CUT, iter_json_array, parse_json_line
from .schema import RecordError

EMPTY_LINE = "empty line"  # the reason a blank line is rejected: it is no row


def container(path: Path, fmt: InputFormat) -> str:
    """How the file holds its rows: "parquet", "tsv", "array" (a JSON array) or "lines" (JSONL)."""
    if fmt.container in ("parquet", "tsv"):
        return fmt.container
    if strip_gz(path.name.lower()).endswith(".parquet"):
        return "parquet"
    return "array" if is_json_array(path) else "lines"


def raw_rows(path: Path, fmt: InputFormat) -> Iterator[tuple[int, Any, str]]:
    """(line, parsed row or the RecordError rejecting it, raw text) of every row of the file."""
    kind = container(path, fmt)
    if kind == "parquet":
        for n, row in iter_parquet_rows(path):
            yield n, {k: v for k, v in row.items() if v is not None}, ""
        return
    if kind == "array":
        yield from iter_json_array(path)
        return
    for n, raw, ended in iter_lines(path):
        if not raw.strip():
            yield n, RecordError(EMPTY_LINE), ""
            continue
        text = raw[:RAW_CUT].decode("utf-8", errors="replace")
        try:
            if kind == "tsv":
                try:
                    yield n, raw.decode("utf-8").split("\t"), text
                except UnicodeDecodeError as e:
                    raise RecordError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            else:
                yield n, parse_json_line(raw, ended), text
        except RecordError as e:
            yield n, e, text
