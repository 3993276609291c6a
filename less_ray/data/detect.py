"""What a file is: its format from a `FORMAT:` prefix or its name (detect_format, resolve), and,
when that is not enough or looks wrong, the format its first rows look like (sniff_format,
format_hint: "this looks like Alpaca; pass --input-format alpaca")."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .containers import ContainerError, strip_gz
from .formats import INPUT_FORMATS, same_format, split_format_spec
from .rows import EMPTY_LINE, raw_rows
from .schema import RecordError


def detect_format(path: str | Path) -> str:
    spec_path, spec_fmt = split_format_spec(path)
    if spec_fmt:
        return spec_fmt
    name = strip_gz(str(spec_path).lower())
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    found = sniff_format(spec_path)
    looks = (f" (line {found[1]} looks like {INPUT_FORMATS[found[0]].title}: --input-format {found[0]})"
             if found else "")
    raise ValueError(f"{path}: cannot tell the format from the name{looks}; pass --input-format, one of "
                     f"{', '.join(INPUT_FORMATS)} (or prefix the path: FORMAT:{path})")


def resolve(path: str | Path, format: str | None) -> tuple[Path, str]:
    """(the file, its format name) for `path` (maybe `FORMAT:PATH`) read as `format` (None: by
    prefix or name). ValueError: unknown format; FileNotFoundError: no such file."""
    spec_path, spec_fmt = split_format_spec(path)
    path = Path(spec_path)
    fmt = spec_fmt or format or detect_format(path)
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(INPUT_FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path, fmt


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
        kind = "parquet" if strip_gz(p.name.lower()).endswith(".parquet") else "jsonl"
        tried = 0
        for n, obj, raw in raw_rows(p, INPUT_FORMATS[kind]):
            if isinstance(obj, RecordError) and str(obj) == EMPTY_LINE:
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
    except (ContainerError, OSError, ValueError):
        return None
    return None


def format_hint(path: str | Path, used: str) -> str | None:
    """"line 1 has keys instruction/input/output: this looks like Alpaca; pass --input-format alpaca"
    when the file looks like another format than `used`; else None."""
    found = sniff_format(path)
    if found is None:
        return None
    name, line, keys = found
    if same_format(name, used):
        return None
    what = f"keys {'/'.join(keys[:6])}" if keys else "3 tab-separated fields"
    return f"line {line} has {what}: this looks like {INPUT_FORMATS[name].title}; pass --input-format {name}"
