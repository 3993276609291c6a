"""How many rows a data file holds, without building its records: the one pool row counter.

`count_records(path)` takes what the readers take (`FORMAT:PATH` prefixes, every INPUT_FORMATS
name, gzip whatever the name, a UTF-8 byte-order mark) and counts the rows they would read:
- JSONL and TSV lines: the non-blank lines (a line of only whitespace is blank: the
  reader rejects it as "empty line", it is never a record), the last one counted with or
  without its newline. No line is decoded or parsed: a plain file is read line by line with
  bytes.strip() as the only test; a gzip-compressed one through the reader's own line reader
  (containers.iter_lines), so a damaged stream fails with the reader's words.
- a `.json` file holding one JSON array: its elements, found by the reader's own scanner
  (json_text.split_json_array) without parsing them; empty elements (`,,`, a trailing comma)
  are not rows.
- Parquet: the row count in the file's metadata.
For a file whose every row is valid this is the number of records `iter_records` yields (and
`len(read_records(path).records)`). Rows are not validated: a malformed or invalid row, or a
duplicate id, still counts. A file that cannot be read to its end (damaged gzip stream, JSON
array not closed, text after its ']', an array that is not UTF-8) raises DataFileError naming
file, line and reason, as the reader would; no file: FileNotFoundError; unknown format (a name
that is neither .jsonl/.json/.parquet[.gz] nor prefixed): ValueError, as the reader.
"""
from __future__ import annotations

from pathlib import Path

from .containers import BOM, ContainerError, is_gzip, iter_lines
from .detect import resolve
from .formats import INPUT_FORMATS
from .json_text import NOT_CLOSED, split_json_array
from .rows import container
from .schema import DataFileError, DataProblem


def count_records(path: str | Path, format: str | None = None) -> int:
    """The rows (= records, when all are valid) of one data file; see the module docstring.
    `path` and `format` as for io.iter_records."""
    p, fmt = resolve(path, format)
    kind = container(p, INPUT_FORMATS[fmt])
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq
            return pq.ParquetFile(p).metadata.num_rows
        if kind == "array":
            return _count_array(p)
        if is_gzip(p):
            return sum(1 for _, raw, _ in iter_lines(p) if raw.strip())
        return _count_plain_lines(p)
    except ContainerError as e:
        raise DataFileError([DataProblem(str(p), e.line, e.reason)]) from None


def _count_array(path: Path) -> int:
    n = 0
    for line, _, kind in split_json_array(path):
        if kind == "open":  # the file ends inside the array: it cannot be all there
            raise ContainerError(line, NOT_CLOSED)
        n += kind == "element"
    return n


def _count_plain_lines(path: Path) -> int:
    """Non-blank lines of an uncompressed file, split as containers.iter_lines splits them (at
    b"\\n"; a byte-order mark opening the file dropped), one C-level readline each. (Counting
    b"\\n" in large chunks and finding blank lines with a regex was measured no faster: reading
    the bytes costs as much as either.)"""
    with open(path, "rb") as fh:
        first = fh.readline()
        if first.startswith(BOM):
            first = first[len(BOM):]
        return bool(first.strip()) + sum(1 for line in fh if line.strip())
