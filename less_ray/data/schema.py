"""The one record schema every stage reads and writes.

A record is an open-instruct style conversation:
    {"id": str, "source": str, "messages": [{"role", "content"}, ...],
     "task": str | None, "subtask": str | None}
`task`/`subtask` are set on target examples only. `id` is given by the input or is a
content hash, so it is stable across reruns and machines.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
RECORD_FIELDS = ("id", "source", "messages", "task", "subtask")


class RecordError(ValueError):
    """A record that breaks the schema; the message says which field and why."""


@dataclass(frozen=True)
class Record:
    id: str
    source: str
    messages: tuple[dict[str, str], ...]
    task: str | None = None
    subtask: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "source": self.source,
                             "messages": [dict(m) for m in self.messages]}
        if self.task is not None:
            d["task"] = self.task
        if self.subtask is not None:
            d["subtask"] = self.subtask
        return d


def content_id(source: str, messages: list[dict[str, str]] | tuple[dict[str, str], ...]) -> str:
    """Stable id from content: same source and conversation give the same id anywhere."""
    canon = json.dumps([source, [[m["role"], m["content"]] for m in messages]],
                       ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:20]


def _check_str(obj: dict, key: str, required: bool) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise RecordError(f"missing field '{key}'")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def validate_messages(messages: Any) -> tuple[dict[str, str], ...]:
    """Check the conversation; return it as a tuple of plain {role, content} dicts."""
    if not isinstance(messages, list):
        raise RecordError(f"field 'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise RecordError("field 'messages' is empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RecordError(f"messages[{i}] must be an object, got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role is None or content is None:
            missing = "role" if role is None else "content"
            raise RecordError(f"messages[{i}] has no '{missing}'")
        if not isinstance(role, str):
            raise RecordError(f"messages[{i}].role must be a string, got {type(role).__name__}")
        if role not in ROLES:
            raise RecordError(f"messages[{i}] has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise RecordError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise RecordError(f"messages[{i}] is an empty or whitespace-only assistant turn")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise RecordError("no assistant turn (nothing to train on)")
    return tuple(out)


def record_from_dict(obj: Any, default_source: str | None = None) -> Record:
    """Build a validated Record from a parsed JSON object (the schema above).

    Raises RecordError with a reason a person can act on.
    """
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("messages") is None:
        raise RecordError("missing field 'messages'")
    messages = validate_messages(obj["messages"])
    source = _check_str(obj, "source", required=default_source is None) or default_source
    if not source.strip():
        raise RecordError("field 'source' is empty")
    rid = obj.get("id")
    if rid is None:
        rid = content_id(source, messages)
    elif isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)  # integer ids are common in the wild; keep them, as strings
    elif not isinstance(rid, str):
        raise RecordError(f"field 'id' must be a string, got {type(rid).__name__}")
    elif not rid.strip():
        raise RecordError("field 'id' is empty")
    return Record(id=rid, source=source, messages=messages,
                  task=_check_str(obj, "task", required=False),
                  subtask=_check_str(obj, "subtask", required=False))


def make_record(source: str, messages: list[dict[str, str]], id: str | None = None,
                task: str | None = None, subtask: str | None = None) -> Record:
    """Build a validated Record from Python values (adapters and generators use this)."""
    obj: dict[str, Any] = {"source": source, "messages": messages, "id": id}
    if task is not None:
        obj["task"] = task
    if subtask is not None:
        obj["subtask"] = subtask
    return record_from_dict(obj)


def chat(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-turn conversation."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


@dataclass(frozen=True)
class DataProblem:
    """One rejected input line: where it is and why it was rejected."""
    path: str
    line: int  # 1-based; 0 when the problem is not tied to one line
    reason: str
    raw: str = ""  # the offending text (possibly cut), for quarantine files

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataFileError(ValueError):
    """Input that cannot be read as asked; lists problems as `file:line: reason`."""

    def __init__(self, problems: list[DataProblem], total: int | None = None, limit: int = 20):
        self.problems = problems
        total = len(problems) if total is None else total
        shown = "\n".join(f"  {p}" for p in problems[:limit])
        more = f"\n  ... and {total - limit} more" if total > limit else ""
        super().__init__(f"{total} bad input line(s):\n{shown}{more}")
