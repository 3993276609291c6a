"""The input formats one registry knows (INPUT_FORMATS): the record schema (JSONL, Parquet),
prompt/completion, and every candidate data set's native format (sources.NATIVE_FORMATS), each
with how its row becomes a schema dict and from what container. A path may carry its format as
a prefix, `alpaca:my_data.json` (split_format_spec)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .schema import RecordError
from .sources import NATIVE_FORMATS


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


def same_format(a: str, b: str) -> bool:
    """Whether two format names read a row the same way (a hint between them is noise)."""
    return a == b or any(a in group and b in group for group in _SAME)


def split_format_spec(spec: str | Path) -> tuple[str, str | None]:
    """`alpaca:data/a.json` -> ("data/a.json", "alpaca"); a plain path -> (path, None).
    A prefix counts only when it names a registered format and the whole string is not an
    existing file."""
    s = str(spec)
    name, sep, rest = s.partition(":")
    if sep and rest and name in INPUT_FORMATS and not Path(s).exists():
        return rest, name
    return s, None
