"""`less-ray data inspect FILE`: validate a file, count by source, length statistics, and say
which input format the file looks like when it is read as another one."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .io import detect_format, format_hint, read_records, sniff_format, split_format_spec
from .schema import DataProblem

_WORD = re.compile(r"\w+|[^\w\s]")


@dataclass
class InspectResult:
    path: str
    lines: int
    records: int
    by_source: dict[str, int]
    problems: list[DataProblem]
    length_unit: str  # "tokens" with a tokenizer, else "words"
    lengths: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # tokenisation policy skips, by reason
    rows: int = 0  # records + rejected (a JSON array's elements; = lines for JSONL)
    format: str = ""  # the input format it was read as
    detected: str | None = None  # the format its first row looks like (None: unknown)
    hint: str | None = None  # "line 1 has keys ...: this looks like Alpaca; pass --input-format alpaca"

    @property
    def ok(self) -> bool:
        return not self.problems and self.records > 0


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "max": int(a.max())}


def inspect_file(path: str, format: str | None = None, tokenizer=None, chat_format: str = "less",
                 max_seq_length: int = 2048) -> InspectResult:
    """Read every line; never raises on bad lines (they are returned as problems)."""
    rep = read_records(path, format=format, on_error="collect")
    found = sniff_format(path)
    used = split_format_spec(path)[1] or format or detect_format(path)
    lengths: list[int] = []
    skipped: Counter = Counter()
    if tokenizer is not None:
        from ..core.formatting import FormatConfig, SkippedExample, tokenize_record
        cfg = FormatConfig(chat_format=chat_format, max_seq_length=10**9)
        for r in rep.records:
            t = tokenize_record(r, tokenizer, cfg)
            if isinstance(t, SkippedExample):
                skipped[t.reason] += 1
                continue
            lengths.append(len(t.input_ids))
            if len(t.input_ids) > max_seq_length:
                ex = tokenize_record(r, tokenizer, FormatConfig(chat_format, max_seq_length))
                if isinstance(ex, SkippedExample):
                    skipped[ex.reason] += 1
                else:
                    skipped[f"truncated to {max_seq_length} tokens (kept)"] += 1
    else:
        lengths = [sum(len(_WORD.findall(m["content"])) for m in r.messages) for r in rep.records]
    return InspectResult(path=str(path), lines=rep.lines, records=len(rep.records),
                         by_source=rep.counts["by_source"], problems=rep.problems,
                         length_unit="tokens" if tokenizer is not None else "words",
                         lengths=_stats(lengths), skipped=dict(skipped), format=used, rows=rep.rows,
                         detected=found[0] if found else None,
                         hint=rep.hint if rep.problems else format_hint(path, used))


def format_result(res: InspectResult, limit: int = 20) -> str:
    rows = f" ({res.rows} rows)" if res.rows != res.lines else ""
    lines = [f"{res.path}: {res.lines} lines{rows}, {res.records} valid records, {len(res.problems)} rejected"
             f" (read as {res.format})"]
    if res.hint:
        lines.append(f"hint: {res.hint}")
    if res.rows == 0:
        lines.append("no records: the file is empty")
    elif res.records == 0:
        lines.append(f"no records: all {res.rows} row(s) rejected")
    if res.problems:
        lines.append("problems:")
        lines += [f"  {p}" for p in res.problems[:limit]]
        if len(res.problems) > limit:
            lines.append(f"  ... and {len(res.problems) - limit} more")
    lines.append("by source:")
    width = max((len(s) for s in res.by_source), default=0)
    lines += [f"  {s:<{width}}  {n}" for s, n in res.by_source.items()]
    if res.lengths:
        lines.append(f"length ({res.length_unit}): " + ", ".join(f"{k} {v}" for k, v in res.lengths.items()))
    if res.length_unit == "words":
        lines.append("  (pass --tokenizer MODEL_DIR for token lengths and truncation counts)")
    for reason, n in res.skipped.items():
        lines.append(f"tokenisation: {n} {reason}")
    return "\n".join(lines)


def inspect_summary(res: InspectResult) -> dict[str, Any]:
    return {"path": res.path, "format": res.format, "detected": res.detected, "hint": res.hint,
            "lines": res.lines, "rows": res.rows, "records": res.records, "rejected": len(res.problems),
            "by_source": res.by_source, "lengths": res.lengths, "skipped": res.skipped}
