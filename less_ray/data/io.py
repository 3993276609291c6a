"""Read records: the schema (JSONL, Parquet), prompt/completion, Alpaca, ShareGPT, and every
candidate data set's native format (one registry: INPUT_FORMATS, in formats.py).

Bad input is never dropped silently. Each bad line becomes a DataProblem naming file,
line and reason; with `on_error="raise"` the read fails listing them, with
`on_error="quarantine"` the bad lines go to a side file and the counts are reported.

Containers, by what the file is rather than what it is called (containers.py, rows.py): JSONL
lines (gzip-compressed files are read transparently, whatever their name; a UTF-8 byte-order
mark on line 1 is stripped), a `.json` file holding one JSON array (json_text.py; problems name
the line its element starts on), Parquet rows (`.parquet`), and tab-separated lines for
`flan_v2_cot`. A path may carry its format as a prefix, `alpaca:my_data.json`, so one command
can mix formats. Writing is writers.py; counting a file's rows cheaply is count.py.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from .containers import ContainerError, strip_gz
from .detect import detect_format, format_hint, resolve, sniff_format  # noqa: F401  (re-exported)
from .formats import INPUT_FORMATS, InputFormat, split_format_spec  # noqa: F401  (re-exported)
from .json_text import MAX_NESTING, RAW_CUT  # noqa: F401  (re-exported)
from .rows import raw_rows
from .schema import DataFileError, DataProblem, Record, RecordError, record_from_dict
from .writers import (_parquet_schema, write_jsonl, write_parquet, write_quarantine,  # noqa: F401
                      write_records)  # (re-exported: callers import them from here)

OnError = Literal["raise", "quarantine", "collect"]  # collect: return problems, write nothing


@dataclass
class ReadReport:
    """What a read produced: records kept, problems found, where problems went."""
    path: str
    records: list[Record] = field(default_factory=list)
    problems: list[DataProblem] = field(default_factory=list)
    lines: int = 0  # the last line read (a JSON array: where its last element starts)
    quarantine_path: str | None = None
    rows: int = 0  # rows read: records + rejected (= lines for JSONL)
    record_lines: list[int] = field(default_factory=list)  # the input line of each record
    format: str = ""
    hint: str | None = None  # "this looks like Alpaca; pass --input-format alpaca" when it does

    @property
    def counts(self) -> dict[str, Any]:
        return {"lines": self.lines, "records": len(self.records), "rejected": len(self.problems),
                "by_source": dict(sorted(Counter(r.source for r in self.records).items()))}


class DataFormatError(DataFileError):
    """DataFileError whose message ends with a hint naming the format the file looks like."""

    def __init__(self, problems: list[DataProblem], hint: str | None = None):
        super().__init__(problems)
        self.hint = hint
        if hint:
            self.args = (f"{self.args[0]}\n  hint: {hint}",)


class NoRecordsError(DataFileError):
    """A file (or a whole input) that yields no record at all; the message gives the counts."""

    def __init__(self, message: str, problems: Iterable[DataProblem] = ()):
        super().__init__(list(problems))
        self.args = (message,)


def _to_schema(fmt: InputFormat, obj: Any) -> Any:
    if fmt.to_dict is None:
        return obj
    try:
        return fmt.to_dict(obj)
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        what = f"missing field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise RecordError(f"not a {fmt.title} row: {what}") from None


def _checked_rows(path: Path, fmt: str | InputFormat, default_source: str,
                  check_duplicates: bool) -> Iterator[tuple[int, Record | DataProblem]]:
    """(line, Record or the DataProblem that rejects it) for every line of the file."""
    fmt = INPUT_FORMATS[fmt] if isinstance(fmt, str) else fmt
    seen: dict[str, int] = {}
    rows = raw_rows(path, fmt)
    while True:
        try:
            n, obj, raw = next(rows)
        except StopIteration:
            return
        except ContainerError as e:
            yield e.line, DataProblem(str(path), e.line, e.reason, "")
            return
        try:
            if isinstance(obj, RecordError):
                raise obj
            rec = record_from_dict(_to_schema(fmt, obj), default_source=default_source)
            if check_duplicates:
                if rec.id in seen:
                    raise RecordError(f"duplicate id {rec.id!r} (first seen on line {seen[rec.id]})")
                seen[rec.id] = n
            yield n, rec
        except RecordError as e:
            yield n, DataProblem(str(path), n, str(e), raw or json.dumps(obj, default=str)[:RAW_CUT])


# --- reading -----------------------------------------------------------------------------------
def iter_records(path: str | Path, format: str | None = None, default_source: str | None = None,
                 check_duplicates: bool = True) -> Iterator[Record]:
    """Stream a (large) file's records; the first bad line raises DataFileError naming it."""
    path, fmt = resolve(path, format)
    for _, item in _checked_rows(path, fmt, default_source or _stem(path), check_duplicates):
        if isinstance(item, DataProblem):
            raise DataFormatError([item], format_hint(path, fmt))
        yield item


def _stem(path: Path) -> str:
    return Path(strip_gz(path.name)).stem  # pool.jsonl.gz -> pool


def read_records(path: str | Path, format: str | None = None, on_error: OnError = "raise",
                 quarantine_path: str | Path | None = None, default_source: str | None = None,
                 check_duplicates: bool = True) -> ReadReport:
    """Read a file of records, validating every line.

    `path` may be `FORMAT:PATH`; `format` is any INPUT_FORMATS name (default: by extension,
    the schema). `default_source` fills `source` where a line has none (default: the file's
    stem). Lines are numbered from 1 (Parquet: row number from 1; a JSON array: the line
    its element starts on). An empty file gives an empty report: callers that need records
    call `require_records(report, what)`.
    """
    path, fmt = resolve(path, format)
    report = ReadReport(path=str(path), format=fmt)
    for n, item in _checked_rows(path, fmt, default_source or _stem(path), check_duplicates):
        report.lines = max(report.lines, n)
        report.rows += 1
        if isinstance(item, DataProblem):
            report.problems.append(item)
        else:
            report.records.append(item)
            report.record_lines.append(n)
    if report.problems:
        report.hint = format_hint(path, fmt)
        if on_error == "raise":
            raise DataFormatError(report.problems, report.hint)
        if on_error == "collect":
            return report
        qpath = Path(quarantine_path) if quarantine_path else path.with_name(path.name + ".quarantine.jsonl")
        write_quarantine(report.problems, qpath)
        report.quarantine_path = str(qpath)
    return report


def require_records(report: ReadReport, what: str = "records") -> list[Record]:
    """The report's records, or NoRecordsError with the counts when there are none: an empty
    file, or a file whose every line was rejected (quarantined). Call it wherever an empty
    input must stop the run before any work (pool, targets)."""
    if report.records:
        return report.records
    if report.rows == 0:
        msg = f"{report.path}: no {what}: the file is empty (0 lines)"
    else:
        where = f"; quarantined to {report.quarantine_path}" if report.quarantine_path else ""
        msg = (f"{report.path}: no {what}: all {report.rows} row(s) rejected "
               f"({len(report.problems)} problem(s){where}); first: {report.problems[0]}")
    if report.hint:
        msg += f"\n  hint: {report.hint}"
    raise NoRecordsError(msg, report.problems)


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


