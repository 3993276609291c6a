"""Write records in the schema (JSONL, Parquet) and rejected lines to a quarantine file; every
write goes to a temp name first, so a failed write leaves no half file behind."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .detect import detect_format
from .schema import DataProblem, Record


def write_quarantine(problems: Iterable[DataProblem], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps({"file": p.path, "line": p.line, "reason": p.reason, "raw": p.raw},
                                ensure_ascii=False) + "\n")


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write records in the schema; written to a temp name first so no half file is visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in records:
                try:
                    fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
                except UnicodeEncodeError as e:
                    raise ValueError(f"{path}: record {r.id!r} holds {e.object[e.start]!r}, a lone surrogate "
                                     "(not valid Unicode); nothing was written") from None
                n += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no half file behind
    return n


PARQUET_SCHEMA = None  # built lazily so importing this module does not import pyarrow


def _parquet_schema():
    global PARQUET_SCHEMA
    if PARQUET_SCHEMA is None:
        import pyarrow as pa
        message = pa.struct([("role", pa.string()), ("content", pa.string()),
                             ("encoding", pa.string()), ("cue", pa.string())])  # schema.MESSAGE_EXTRAS
        PARQUET_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()),
                                    ("messages", pa.list_(message)),
                                    ("task", pa.string()), ("subtask", pa.string())])
    return PARQUET_SCHEMA


def write_parquet(records: Iterable[Record], path: str | Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"id": r.id, "source": r.source, "messages": list(r.messages),
             "task": r.task, "subtask": r.subtask} for r in records]
    table = pa.Table.from_pylist(rows, schema=_parquet_schema())
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return len(rows)


def write_records(records: Iterable[Record], path: str | Path, format: str | None = None) -> int:
    fmt = format or detect_format(path)
    if fmt == "parquet":
        return write_parquet(records, path)
    if fmt == "jsonl":
        return write_jsonl(records, path)
    raise ValueError(f"cannot write format {fmt!r}; expected jsonl or parquet")
