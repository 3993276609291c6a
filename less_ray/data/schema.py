"""The one record schema every stage reads and writes.

A record is an open-instruct style conversation:
    {"id": str, "source": str, "messages": [{"role", "content"}, ...],
     "task": str | None, "subtask": str | None}
`task`/`subtask` are set on target examples only. `id` is given by the input or is a
content hash, so it is stable across reruns and machines.

The last (assistant) message may carry how LESS's code encodes the record, which LESS decides
from the shape of its input rather than from the conversation:
- `"encoding": "prompt_completion"`: the record came from a prompt/completion line; the user
  message holds the prompt and the assistant message the completion, both verbatim (LESS's
  `encode_with_prompt_completion_format`: `prompt [+ " "] + completion + eos`, no role tags);
- `"encoding": "validation"` with `"cue"`: a target example as LESS's `get_validation_dataset`
  builds it: `<|user|>\n{user}\n<|assistant|>\n{cue}{answer}`, contents verbatim, the cue
  ("A:", "The answer is:", ...) not trained on, no eos.
A message without these keys is an ordinary chat turn (LESS's `encode_with_messages_format`).
They travel with the message through JSONL and Parquet, so every stage sees them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
RECORD_FIELDS = ("id", "source", "messages", "task", "subtask")
ENCODINGS = ("prompt_completion", "validation")  # a message's optional "encoding"
MESSAGE_EXTRAS = ("encoding", "cue")  # optional message keys besides role and content


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
    # the optional keys join the hash only when present: ordinary records keep their ids
    canon = json.dumps([source, [[m["role"], m["content"]] + [[k, m[k]] for k in MESSAGE_EXTRAS if m.get(k) is not None]
                                 for m in messages]],
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
        msg = {"role": role, "content": content}
        for key in MESSAGE_EXTRAS:  # absent or null (a Parquet row of an ordinary message): not set
            if m.get(key) is not None:
                if not isinstance(m[key], str):
                    raise RecordError(f"messages[{i}].{key} must be a string, got {type(m[key]).__name__}")
                msg[key] = m[key]
        out.append(msg)
    if not any(m["role"] == "assistant" for m in out):
        raise RecordError("no assistant turn (nothing to train on)")
    _check_encoding(out)
    return tuple(out)


def message_encoding(messages) -> str | None:
    """The record's LESS encoding (`prompt_completion`, `validation`) or None for a chat."""
    return messages[-1].get("encoding") if messages else None


def _check_encoding(msgs: list[dict[str, str]]) -> None:
    for i, m in enumerate(msgs):
        enc = m.get("encoding")
        if enc is not None and enc not in ENCODINGS:
            raise RecordError(f"messages[{i}].encoding must be one of {', '.join(ENCODINGS)}, got {enc!r}")
        if enc is not None and i != len(msgs) - 1:
            raise RecordError(f"messages[{i}].encoding: only the last (assistant) message may carry it")
        if "cue" in m and enc != "validation":
            raise RecordError(f"messages[{i}].cue is only valid with encoding 'validation'")
    enc = message_encoding(msgs)
    roles = [m["role"] for m in msgs]
    if enc == "prompt_completion" and roles not in (["user", "assistant"], ["system", "user", "assistant"]):
        raise RecordError(f"encoding 'prompt_completion' needs [system,] user, assistant messages, got {roles}")
    if enc == "validation" and roles != ["user", "assistant"]:
        raise RecordError(f"encoding 'validation' needs user, assistant messages, got {roles}")


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


def prompt_completion(prompt: str, completion: str, system: str | None = None) -> list[dict[str, str]]:
    """A prompt/completion line as messages that remember it (LESS encodes it as raw text)."""
    msgs = chat(prompt, completion, system)
    msgs[-1]["encoding"] = "prompt_completion"
    return msgs


def validation(user: str, cue: str, answer: str) -> list[dict[str, str]]:
    """A LESS target example: `<|user|>\n{user}\n<|assistant|>\n{cue}{answer}`, only the answer labelled."""
    return [{"role": "user", "content": user},
            {"role": "assistant", "content": answer, "encoding": "validation", "cue": cue}]


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
