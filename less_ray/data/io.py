"""Read and write records: the schema (JSONL, Parquet), prompt/completion, Alpaca, ShareGPT,
and every candidate data set's native format (one registry: INPUT_FORMATS).

Bad input is never dropped silently. Each bad line becomes a DataProblem naming file,
line and reason; with `on_error="raise"` the read fails listing them, with
`on_error="quarantine"` the bad lines go to a side file and the counts are reported.

Containers, by what the file is rather than what it is called: JSONL lines (gzip-compressed
files are read transparently, whatever their name; a UTF-8 byte-order mark on line 1 is
stripped), a `.json` file holding one JSON array (problems name the line its element starts
on), Parquet rows (`.parquet`), and tab-separated lines for `flan_v2_cot`.
A path may carry its format as a prefix, `alpaca:my_data.json`, so one command can mix formats.
"""
from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from .schema import (DataFileError, DataProblem, Record, RecordError, chat,
                     record_from_dict)
from .sources import NATIVE_FORMATS

OnError = Literal["raise", "quarantine", "collect"]  # collect: return problems, write nothing
_RAW_CUT = 2000  # quarantine keeps at most this much of an offending line
MAX_NESTING = 100  # deepest JSON nesting a line may have (an OASST tree is ~13 deep)
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"


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


def _prompt_completion_to_dict(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt", "completion"):
        if key not in obj:
            raise RecordError(f"missing field '{key}'")
        if not isinstance(obj[key], str):
            raise RecordError(f"field '{key}' must be a string, got {type(obj[key]).__name__}")
    out = {k: obj[k] for k in ("id", "source", "task", "subtask") if k in obj}
    # the messages remember the line was prompt/completion: chat_format less encodes it as LESS
    # does (raw prompt [+ " "] + completion + eos), not as a chat
    from .schema import prompt_completion
    out["messages"] = prompt_completion(obj["prompt"], obj["completion"], system=obj.get("system"))
    return out




@dataclass(frozen=True)
class InputFormat:
    """One readable input format: how a row becomes a schema dict, and from what container."""
    name: str
    title: str  # how a person names it ("Alpaca")
    keys: str  # the fields its rows have
    to_dict: Callable[[Any], dict] | None = None  # None: the row is the schema itself
    container: str = "json"  # json (JSONL / JSON array / Parquet by name) | parquet | tsv


def _native_to_dict(nf) -> Callable[[Any], dict]:
    def to_dict(row: Any) -> dict:
        if nf.container == "json" and not isinstance(row, dict):
            raise RecordError(f"expected a JSON object, got {type(row).__name__}")
        out = {k: row[k] for k in nf.passthrough if row.get(k) is not None} if isinstance(row, dict) else {}
        if nf.id_key and "id" not in out and row.get(nf.id_key) is not None:
            out["id"] = row[nf.id_key]
        out["messages"] = nf.messages(row)
        return out
    return to_dict


INPUT_FORMATS: dict[str, InputFormat] = {
    "jsonl": InputFormat("jsonl", "the record schema", "id, source, messages: [{role, content}]"),
    "parquet": InputFormat("parquet", "the record schema (Parquet)", "id, source, messages", container="parquet"),
    "prompt_completion": InputFormat("prompt_completion", "prompt/completion", "prompt, completion",
                                     _prompt_completion_to_dict),
    **{name: InputFormat(name, nf.title, nf.keys, _native_to_dict(nf), nf.container)
       for name, nf in NATIVE_FORMATS.items()},
}
FORMATS = tuple(INPUT_FORMATS)
_SCHEMA_LIKE = {"jsonl", "parquet", "super_ni"}  # rows that are the schema's messages as they are
_SAME = [_SCHEMA_LIKE, {"alpaca", "code_alpaca"}]


def register_format(fmt: InputFormat) -> None:
    """Add a reader (a row -> schema dict function) under a new name."""
    if fmt.name in INPUT_FORMATS:
        raise ValueError(f"input format {fmt.name!r} already exists")
    INPUT_FORMATS[fmt.name] = fmt


def split_format_spec(spec: str | Path) -> tuple[str, str | None]:
    """`alpaca:data/a.json` -> ("data/a.json", "alpaca"); a plain path -> (path, None).
    A prefix counts only when it names a registered format and the whole string is not an
    existing file."""
    s = str(spec)
    name, sep, rest = s.partition(":")
    if sep and rest and name in INPUT_FORMATS and not Path(s).exists():
        return rest, name
    return s, None


def _strip_gz(name: str) -> str:
    return name[:-3] if name.endswith(".gz") else name


def detect_format(path: str | Path) -> str:
    spec_path, spec_fmt = split_format_spec(path)
    if spec_fmt:
        return spec_fmt
    name = _strip_gz(str(spec_path).lower())
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    found = sniff_format(spec_path)
    looks = (f" (line {found[1]} looks like {INPUT_FORMATS[found[0]].title}: --input-format {found[0]})"
             if found else "")
    raise ValueError(f"{path}: cannot tell the format from the name{looks}; pass --input-format, one of "
                     f"{', '.join(INPUT_FORMATS)} (or prefix the path: FORMAT:{path})")


# --- containers --------------------------------------------------------------------------------
class _ContainerError(Exception):
    """The file itself cannot be read further (damaged gzip stream, unclosed JSON array)."""

    def __init__(self, line: int, reason: str):
        super().__init__(reason)
        self.line, self.reason = line, reason


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_binary(path: Path):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


_GZIP_ERRORS = (EOFError, OSError, zlib.error)  # gzip.BadGzipFile is an OSError


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, raw bytes without newline, whether it ended in a newline).

    gzip-compressed files (magic bytes 1f 8b) are decompressed, whatever their name; a
    UTF-8 byte-order mark at the start of line 1 is dropped."""
    n = 0
    with _open_binary(path) as fh:
        it = iter(fh)
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except _GZIP_ERRORS as e:
                raise _ContainerError(n + 1, f"gzip-compressed file is damaged or truncated after line {n} "
                                             f"({type(e).__name__}: {e})") from None
            n += 1
            if n == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            ended = raw.endswith(b"\n")
            yield n, raw.rstrip(b"\r\n"), ended


def _read_all(path: Path) -> bytes:
    try:
        with _open_binary(path) as fh:
            data = fh.read()
    except _GZIP_ERRORS as e:
        raise _ContainerError(1, f"gzip-compressed file is damaged or truncated ({type(e).__name__}: {e})") from None
    return data[len(_BOM):] if data.startswith(_BOM) else data


def _is_json_array(path: Path) -> bool:
    """A `.json` (or `.json.gz`) file whose first non-blank character is '['."""
    if not _strip_gz(path.name.lower()).endswith(".json"):
        return False
    try:
        with _open_binary(path) as fh:
            head = fh.read(4096)
    except _GZIP_ERRORS:
        return False
    head = head[len(_BOM):] if head.startswith(_BOM) else head
    return head.lstrip()[:1] == b"["


# A JSON string (escapes included) or one structural character: enough to find where an
# element ends and how deep it nests without parsing it.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def _nesting(text: str) -> int:
    depth = deepest = 0
    for m in _TOKEN.finditer(text):
        c = m.group()[0]
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _loads(text: str, ended: bool = True) -> Any:
    """json.loads with bounded nesting and no lone surrogates; RecordError says why not."""
    if text.count("[") + text.count("{") > MAX_NESTING and _nesting(text) > MAX_NESTING:
        raise RecordError(f"nesting deeper than {MAX_NESTING} (JSON objects/arrays inside each other)")
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RecordError(f"nesting deeper than {MAX_NESTING} (JSON objects/arrays inside each other)") from None
    except json.JSONDecodeError as e:
        if not ended:
            raise RecordError(f"truncated line: last line has no newline and is not complete JSON ({e.msg})") from None
        raise RecordError(f"malformed JSON: {e.msg} at column {e.colno}") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            bad = e.object[e.start]
            raise RecordError(f"lone surrogate \\u{ord(bad):04x} in a JSON string (half of a UTF-16 pair; "
                              "not valid Unicode, cannot be written as UTF-8)") from None
    return obj


def _parse_json_line(raw: bytes, ended: bool) -> Any:
    """Decode one JSONL line; raise RecordError with the reason a person needs."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    return _loads(text, ended)


def _iter_json_array(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line where the element starts, element or RecordError, its text) for one JSON array.
    A bad element is reported on its own; the elements after it are still read."""
    data = _read_all(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _ContainerError(line, f"not valid UTF-8 (byte 0x{data[e.start]:02x}); the JSON array cannot be read") from None
    start = text.index("[") + 1
    counted, line = 0, 1
    depth = 0
    pos = start

    def element(end: int):
        nonlocal counted, line
        chunk = text[pos:end]
        body = chunk.strip()
        at = pos + (len(chunk) - len(chunk.lstrip()))
        line += text.count("\n", counted, at)
        counted = at
        if not body:
            return line, RecordError("malformed JSON: empty element in the array (two commas in a row?)"), ""
        try:
            return line, _loads(body), body[:_RAW_CUT]
        except RecordError as e:
            return line, e, body[:_RAW_CUT]

    for m in _TOKEN.finditer(text, start):
        c = m.group()[0]
        if c in "[{":
            depth += 1
        elif c in "]}":
            if depth == 0:  # the array's own ']'
                if text[pos:m.start()].strip():
                    yield element(m.start())
                elif pos != start:
                    n, _, _ = element(m.start())
                    yield n, RecordError("malformed JSON: a comma before the array's closing ']'"), ""
                rest = text[m.end():]
                if rest.strip():
                    at = m.end() + len(rest) - len(rest.lstrip())
                    raise _ContainerError(line + text.count("\n", counted, at),
                                          "unexpected text after the JSON array's closing ']'")
                return
            depth -= 1
        elif c == "," and depth == 0:
            yield element(m.start())
            pos = m.end()
    if text[pos:].strip():
        n, obj, body = element(len(text))
        if isinstance(obj, RecordError):
            obj = RecordError(f"truncated file: the JSON array is not closed ({obj})")
            yield n, obj, body
            return
        yield n, obj, body
    raise _ContainerError(line, "truncated file: the JSON array is not closed with ']'")


def _iter_parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _container(path: Path, fmt: InputFormat) -> str:
    if fmt.container in ("parquet", "tsv"):
        return fmt.container
    if _strip_gz(path.name.lower()).endswith(".parquet"):
        return "parquet"
    return "array" if _is_json_array(path) else "lines"


def _raw_rows(path: Path, fmt: InputFormat) -> Iterator[tuple[int, Any, str]]:
    """(line, parsed row or the RecordError rejecting it, raw text) of every row of the file."""
    kind = _container(path, fmt)
    if kind == "parquet":
        for n, row in _iter_parquet_rows(path):
            yield n, {k: v for k, v in row.items() if v is not None}, ""
        return
    if kind == "array":
        yield from _iter_json_array(path)
        return
    for n, raw, ended in _iter_lines(path):
        if not raw.strip():
            yield n, RecordError("empty line"), ""
            continue
        text = raw[:_RAW_CUT].decode("utf-8", errors="replace")
        try:
            if kind == "tsv":
                try:
                    yield n, raw.decode("utf-8").split("\t"), text
                except UnicodeDecodeError as e:
                    raise RecordError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
            else:
                yield n, _parse_json_line(raw, ended), text
        except RecordError as e:
            yield n, e, text


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
    rows = _raw_rows(path, fmt)
    while True:
        try:
            n, obj, raw = next(rows)
        except StopIteration:
            return
        except _ContainerError as e:
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
            yield n, DataProblem(str(path), n, str(e), raw or json.dumps(obj, default=str)[:_RAW_CUT])


def _resolve(path: str | Path, format: str | None) -> tuple[Path, str]:
    spec_path, spec_fmt = split_format_spec(path)
    path = Path(spec_path)
    fmt = spec_fmt or format or detect_format(path)
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(INPUT_FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path, fmt


# --- what a file looks like --------------------------------------------------------------------
def _classify(row: Any) -> str | None:
    """The input format a parsed row looks like, from its keys (None: no idea)."""
    if not isinstance(row, dict):
        return None
    conv = row.get("conversations")
    if isinstance(row.get("messages"), list):
        return "jsonl"
    if isinstance(conv, list) and conv:
        if all(isinstance(t, dict) and "from" in t and "value" in t for t in conv):
            return "sharegpt"
        if all(isinstance(t, str) for t in conv):
            return "lima"
    if "instruction" in row:
        if "instances" in row:
            return "self_instruct_seed"
        if "output" in row:
            return "alpaca"
        if "response" in row:
            return "gpteacher"
    if "prompt" in row and "completion" in row:
        c = row["completion"]
        return "p3" if isinstance(c, str) and c.rstrip().endswith("<|endoftext|>") else "prompt_completion"
    if isinstance(row.get("prompt"), dict) and "text" in row["prompt"]:
        return "oasst"
    if "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    if isinstance(row.get("chosen"), str) and "\n\nAssistant:" in row["chosen"]:
        return "hh_rlhf"
    return None


def sniff_format(path: str | Path, max_rows: int = 5) -> tuple[str, int, list[str]] | None:
    """(format name, line, the row's keys) guessed from the first of the first `max_rows`
    non-blank rows that looks like a known format; None if none does."""
    spec_path, _ = split_format_spec(path)
    p = Path(spec_path)
    try:
        kind = "parquet" if _strip_gz(p.name.lower()).endswith(".parquet") else "jsonl"
        tried = 0
        for n, obj, raw in _raw_rows(p, INPUT_FORMATS[kind]):
            if isinstance(obj, RecordError) and str(obj) == "empty line":
                continue
            tried += 1
            if isinstance(obj, RecordError):
                if len(raw.split("\t")) == 3:
                    return "flan_v2_cot", n, []
            else:
                name = _classify(obj)
                if name is not None:
                    return name, n, list(obj) if isinstance(obj, dict) else []
            if tried >= max_rows:
                return None
    except (_ContainerError, OSError, ValueError):
        return None
    return None


def _same_format(a: str, b: str) -> bool:
    return a == b or any(a in group and b in group for group in _SAME)


def format_hint(path: str | Path, used: str) -> str | None:
    """"line 1 has keys instruction/input/output: this looks like Alpaca; pass --input-format alpaca"
    when the file looks like another format than `used`; else None."""
    found = sniff_format(path)
    if found is None:
        return None
    name, line, keys = found
    if _same_format(name, used):
        return None
    what = f"keys {'/'.join(keys[:6])}" if keys else "3 tab-separated fields"
    return f"line {line} has {what}: this looks like {INPUT_FORMATS[name].title}; pass --input-format {name}"


# --- reading -----------------------------------------------------------------------------------
def iter_records(path: str | Path, format: str | None = None, default_source: str | None = None,
                 check_duplicates: bool = True) -> Iterator[Record]:
    """Stream a (large) file's records; the first bad line raises DataFileError naming it."""
    path, fmt = _resolve(path, format)
    for _, item in _checked_rows(path, fmt, default_source or _stem(path), check_duplicates):
        if isinstance(item, DataProblem):
            raise DataFormatError([item], format_hint(path, fmt))
        yield item


def _stem(path: Path) -> str:
    return Path(_strip_gz(path.name)).stem  # pool.jsonl.gz -> pool


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
    path, fmt = _resolve(path, format)
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
