"""Read and write records: schema JSONL, schema Parquet, prompt/completion JSONL.

Bad input is never dropped silently. Each bad line becomes a DataProblem naming file,
line and reason; with `on_error="raise"` the read fails listing them, with
`on_error="quarantine"` the bad lines go to a side file and the counts are reported.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from .schema import (DataFileError, DataProblem, Record, RecordError, chat,
                     record_from_dict)

OnError = Literal["raise", "quarantine", "collect"]  # collect: return problems, write nothing
FORMATS = ("jsonl", "parquet", "prompt_completion")
_RAW_CUT = 2000  # quarantine keeps at most this much of an offending line


@dataclass
class ReadReport:
    """What a read produced: records kept, problems found, where problems went."""
    path: str
    records: list[Record] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)
    lines: int = 0
    quarantine_path: str | None = None

    @property
    def counts(self) -> dict[str, Any]:
        return {"lines": self.lines, "records": len(self.records), "rejected": len(self.problems),
                "by_source": dict(sorted(Counter(r.source for r in self.records).items()))}


def detect_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    raise ValueError(f"{path}: cannot tell the format from the name; pass format= one of {FORMATS}")


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw bytes without newline, whether it ended in a newline)."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            ended = raw.endswith(b"\n")
            yield n, raw.rstrip(b"\r\n"), ended


def _parse_json_line(raw: bytes, ended: bool) -> Any:
    """Decode one JSONL line; raise RecordError with the reason a person needs."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if not ended:
            raise RecordError(f"truncated line: last line has no newline and is not complete JSON ({e.msg})") from None
        raise RecordError(f"malformed JSON: {e.msg} at column {e.colno}") from None


def _prompt_completion_to_dict(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt", "completion"):
        if key not in obj:
            raise RecordError(f"missing field '{key}'")
        if not isinstance(obj[key], str):
            raise RecordError(f"field '{key}' must be a string, got {type(obj[key]).__name__}")
    out = {k: obj[k] for k in ("id", "source", "task", "subtask") if k in obj}
    out["messages"] = chat(obj["prompt"], obj["completion"], system=obj.get("system"))
    return out


def _iter_parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _checked_rows(path: Path, fmt: str, default_source: str,
                  check_duplicates: bool) -> Iterator[tuple[int, Record | DataProblem]]:
    """(line, Record or the DataProblem that rejects it) for every line of the file."""
    seen: dict[str, int] = {}

    def rows() -> Iterator[tuple[int, Any, str]]:
        if fmt == "parquet":
            for n, row in _iter_parquet_rows(path):
                yield n, {k: v for k, v in row.items() if v is not None}, ""
            return
        for n, raw, ended in _iter_lines(path):
            if not raw.strip():
                yield n, RecordError("empty line"), ""
                continue
            text = raw[:_RAW_CUT].decode("utf-8", errors="replace")
            try:
                obj = _parse_json_line(raw, ended)
                if fmt == "prompt_completion":
                    obj = _prompt_completion_to_dict(obj)
                yield n, obj, text
            except RecordError as e:
                yield n, e, text

    for n, obj, raw in rows():
        try:
            if isinstance(obj, RecordError):
                raise obj
            rec = record_from_dict(obj, default_source=default_source)
            if check_duplicates:
                if rec.id in seen:
                    raise RecordError(f"duplicate id {rec.id!r} (first seen on line {seen[rec.id]})")
                seen[rec.id] = n
            yield n, rec
        except RecordError as e:
            yield n, DataProblem(str(path), n, str(e), raw or json.dumps(obj, default=str)[:_RAW_CUT])


def _resolve(path: str | Path, format: str | None) -> tuple[Path, str]:
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path, fmt


def iter_records(path: str | Path, format: str | None = None, default_source: str | None = None,
                 check_duplicates: bool = True) -> Iterator[Record]:
    """Stream a (large) file's records; the first bad line raises DataFileError naming it."""
    path, fmt = _resolve(path, format)
    for _, item in _checked_rows(path, fmt, default_source or path.stem, check_duplicates):
        if isinstance(item, DataProblem):
            raise DataFileError([item])
        yield item


def read_records(path: str | Path, format: str | None = None, on_error: OnError = "raise",
                 quarantine_path: str | Path | None = None, default_source: str | None = None,
                 check_duplicates: bool = True) -> ReadReport:
    """Read a file of records, validating every line.

    `default_source` fills `source` where a line has none (default: the file's stem).
    Lines are numbered from 1 (Parquet: row number from 1).
    """
    path, fmt = _resolve(path, format)
    report = ReadReport(path=str(path))
    for n, item in _checked_rows(path, fmt, default_source or path.stem, check_duplicates):
        report.lines = n
        if isinstance(item, DataProblem):
            report.problems.append(item)
        else:
            report.records.append(item)
    if report.problems:
        if on_error == "raise":
            raise DataFileError(report.problems)
        if on_error == "collect":
            return report
        qpath = Path(quarantine_path) if quarantine_path else path.with_name(path.name + ".quarantine.jsonl")
        write_quarantine(report.problems, qpath)
        report.quarantine_path = str(qpath)
    return report


def write_quarantine(problems: Iterable[DataProblem], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps({"file": p.path, "line": p.line, "reason": p.reason, "raw": p.raw},
                                ensure_ascii=False) + "\n")


def check_unique_ids(records: Iterable[Record], where: str = "records") -> None:
    """Raise DataFileError naming every id used twice (index positions from 1)."""
    seen: dict[str, int] = {}
    problems = []
    for i, r in enumerate(records, start=1):
        if r.id in seen:
            problems.append(DataProblem(where, i, f"duplicate id {r.id!r} (first at {seen[r.id]})"))
        else:
            seen[r.id] = i
    if problems:
        raise DataFileError(problems)


def write_jsonl(records: Iterable[Record], path: str | Path) -> int:
    """Write records in the schema; written to a temp name first so no half file is visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


PARQUET_SCHEMA = None  # built lazily so importing this module does not import pyarrow


def _parquet_schema():
    global PARQUET_SCHEMA
    if PARQUET_SCHEMA is None:
        import pyarrow as pa
        message = pa.struct([("role", pa.string()), ("content", pa.string())])
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
    pq.write_table(table, tmp)
    tmp.replace(path)
    return len(rows)


def write_records(records: Iterable[Record], path: str | Path, format: str | None = None) -> int:
    fmt = format or detect_format(path)
    if fmt == "parquet":
        return write_parquet(records, path)
    if fmt == "jsonl":
        return write_jsonl(records, path)
    raise ValueError(f"cannot write format {fmt!r}; expected jsonl or parquet")
