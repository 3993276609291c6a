"""JSON text -> values, with the reason a person needs when it cannot be one: bounded nesting,
no lone surrogates, valid UTF-8, and the elements of a `.json` file holding one JSON array, each
named by the line it starts on.

The array is split into elements by a small scanner (strings and structural characters only:
`_TOKEN`) and each element is parsed by `json.loads`. The stdlib's `JSONDecoder.raw_decode`
cannot take the scanner's place: after a malformed element it gives no way to find where the
next one starts (a bad element must not hide the rest of the file), its column numbers count
from the physical line rather than from the element, and the nesting bound still needs a scan.
`pyarrow.json` reads newline-delimited JSON only, not an array.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from .containers import ContainerError, read_all
from .schema import RecordError

RAW_CUT = 2000  # quarantine keeps at most this much of an offending line
MAX_NESTING = 100  # deepest JSON nesting a line may have (an OASST tree is ~13 deep)

# A JSON string (escapes included) or one structural character: enough to find where an
# element ends and how deep it nests without parsing it.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
NOT_CLOSED = "truncated file: the JSON array is not closed with ']'"
_TOO_DEEP = f"nesting deeper than {MAX_NESTING} (JSON objects/arrays inside each other)"


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


def loads(text: str, ended: bool = True) -> Any:
    """json.loads with bounded nesting and no lone surrogates; RecordError says why not."""
    if text.count("[") + text.count("{") > MAX_NESTING and _nesting(text) > MAX_NESTING:
        raise RecordError(_TOO_DEEP)
    try:
        obj = json.loads(text)
    except RecursionError:
        raise RecordError(_TOO_DEEP) from None
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


def parse_json_line(raw: bytes, ended: bool) -> Any:
    """Decode one JSONL line; raise RecordError with the reason a person needs."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None
    return loads(text, ended)


def split_json_array(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line where the element starts, its text stripped, kind) for each element of the file's
    JSON array, without parsing any. kind: "element"; "empty" (nothing between two commas);
    "comma" (a comma before the closing ']'); "open" (the last element of an array that is
    never closed: nothing follows it). ContainerError: the text is not UTF-8, text follows the
    closing ']', or the array is not closed after its last complete element."""
    data = read_all(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ContainerError(line, f"not valid UTF-8 (byte 0x{data[e.start]:02x}); the JSON array cannot be read") from None
    start = text.index("[") + 1
    counted, line = 0, 1
    depth = 0
    pos = start

    def element(end: int) -> tuple[int, str]:
        nonlocal counted, line
        chunk = text[pos:end]
        at = pos + (len(chunk) - len(chunk.lstrip()))
        line += text.count("\n", counted, at)
        counted = at
        return line, chunk.strip()

    for m in _TOKEN.finditer(text, start):
        c = m.group()[0]
        if c in "[{":
            depth += 1
        elif c in "]}":
            if depth == 0:  # the array's own ']'
                if text[pos:m.start()].strip():
                    yield (*element(m.start()), "element")
                elif pos != start:
                    yield element(m.start())[0], "", "comma"
                rest = text[m.end():]
                if rest.strip():
                    at = m.end() + len(rest) - len(rest.lstrip())
                    raise ContainerError(line + text.count("\n", counted, at),
                                         "unexpected text after the JSON array's closing ']'")
                return
            depth -= 1
        elif c == "," and depth == 0:
            n, body = element(m.start())
            yield n, body, "element" if body else "empty"
            pos = m.end()
    if text[pos:].strip():
        yield (*element(len(text)), "open")
        return
    raise ContainerError(line, NOT_CLOSED)


def iter_json_array(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line where the element starts, element or RecordError, its text) for one JSON array.
    A bad element is reported on its own; the elements after it are still read."""
    for n, body, kind in split_json_array(path):
        if kind == "empty":
            yield n, RecordError("malformed JSON: empty element in the array (two commas in a row?)"), ""
            continue
        if kind == "comma":
            yield n, RecordError("malformed JSON: a comma before the array's closing ']'"), ""
            continue
        try:
            obj = loads(body)
        except RecordError as e:
            obj = RecordError(f"truncated file: the JSON array is not closed ({e})") if kind == "open" else e
            yield n, obj, body[:RAW_CUT]
            continue
        yield n, obj, body[:RAW_CUT]
        if kind == "open":  # a complete last element, then the end of the file
            raise ContainerError(n, NOT_CLOSED)
