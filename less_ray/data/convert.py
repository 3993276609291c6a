"""`less-ray data convert`: adapters, target builders or user files -> one schema file."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, save_config
from .io import INPUT_FORMATS, NoRecordsError, read_records, write_quarantine, write_records
from .schema import DataFileError, DataProblem, Record


@dataclass
class ConvertConfig:
    out: str = ""  # output file: .jsonl or .parquet
    candidates: list[str] = field(default_factory=list)  # adapter names, or ["all"]
    targets: list[str] = field(default_factory=list)  # bbh, tydiqa, mmlu
    inputs: list[str] = field(default_factory=list)  # files; FORMAT:PATH gives one file its own format
    input_format: str | None = None  # any io.INPUT_FORMATS name (default: by extension, the schema)
    data_root: str | None = None  # ../shared/data by default
    on_error: str = "raise"  # raise | quarantine
    quarantine: str | None = None  # side file for rejected lines (default: <out>.quarantine.jsonl)
    seed: int = 0  # target sampling (TydiQA's one example per language) and `sample`
    sample: int | None = None  # keep a seeded sample of N records of the result (file order kept)
    exclude: list[str] = field(default_factory=list)  # drop these sources (`lima` drops lima/*)


def _gather(cfg: ConvertConfig) -> tuple[list[Record], list[str], dict[str, Any]]:
    """Every record, where each came from ("file:line", or the adapter / target set), and facts."""
    from .sources import CANDIDATE_SOURCES, default_data_root
    from .targets import build_targets

    records: list[Record] = []
    origins: list[str] = []
    facts: dict[str, Any] = {}
    root = Path(cfg.data_root) if cfg.data_root else None
    if cfg.candidates:
        names = list(CANDIDATE_SOURCES) if cfg.candidates == ["all"] else cfg.candidates
        unknown = [n for n in names if n not in CANDIDATE_SOURCES]
        if unknown:
            raise ConfigError(f"unknown candidate set(s) {unknown}; known: {list(CANDIDATE_SOURCES)}")
        data_root = root or default_data_root()
        rows, skipped = 0, []
        for name in CANDIDATE_SOURCES:  # registry order, as load_candidates
            if name in names:
                loaded = CANDIDATE_SOURCES[name](data_root)
                records += loaded.records
                origins += [f"candidate set {name}"] * len(loaded.records)
                rows += loaded.rows
                skipped += loaded.skipped
        facts["source_rows"] = rows
        facts["skipped_no_response"] = len(skipped)
        if skipped:  # counted and kept beside the output, never silently gone
            write_quarantine(skipped, f"{cfg.out}.skipped.jsonl")
            facts["skipped_file"] = f"{cfg.out}.skipped.jsonl"
    for name in cfg.targets:
        kw = {"seed": cfg.seed} if name == "tydiqa" else {}
        built = build_targets(name, root or default_data_root(), **kw)
        records += built
        origins += [f"target set {name}"] * len(built)
    rejected, lines, per_input = 0, 0, []
    for i, path in enumerate(cfg.inputs):
        q = cfg.quarantine
        if q and len(cfg.inputs) > 1:
            q = f"{q}.{i}"
        elif not q:
            q = f"{cfg.out}.quarantine.jsonl" if len(cfg.inputs) == 1 else f"{cfg.out}.quarantine.{i}.jsonl"
        rep = read_records(path, format=cfg.input_format, on_error=cfg.on_error, quarantine_path=q)
        records += rep.records
        origins += [f"{rep.path}:{n}" for n in rep.record_lines]
        rejected += len(rep.problems)
        lines += rep.rows
        per_input.append(f"{rep.path}: " + (f"{rep.rows} row(s), {len(rep.problems)} rejected" if rep.rows
                                             else "empty file (0 lines)"))
        if rep.quarantine_path:
            facts.setdefault("quarantine", []).append(f"{rep.quarantine_path} ({len(rep.problems)} lines)")
        if rep.hint:
            facts.setdefault("hints", []).append(f"{rep.path}: {rep.hint}")
    facts["rejected"] = rejected
    facts["input_rows"] = lines
    facts["_per_input"] = per_input
    return records, origins, facts


def check_unique_ids_across(records: list[Record], origins: list[str]) -> None:
    """DataFileError naming, for each id used twice, where both copies came from: the *input*
    file and line of each (or the adapter / target set), never a position in the output."""
    seen: dict[str, str] = {}
    problems = []
    for r, where in zip(records, origins):
        if r.id in seen:
            path, _, line = where.rpartition(":")
            if path and line.isdigit():
                problems.append(DataProblem(path, int(line), f"duplicate id {r.id!r} (first at {seen[r.id]})"))
            else:
                problems.append(DataProblem(where, 0, f"duplicate id {r.id!r} (first at {seen[r.id]})"))
        else:
            seen[r.id] = where
    if problems:
        raise DataFileError(problems)


def _source_matches(source: str, pattern: str) -> bool:
    return source == pattern or source.startswith(pattern.rstrip("/") + "/")


def _exclude(records: list[Record], origins: list[str], exclude: list[str]) -> tuple[list[Record], list[str], dict]:
    if not exclude:
        return records, origins, {}
    counts = {x: sum(_source_matches(r.source, x) for r in records) for x in exclude}
    unmatched = [x for x, n in counts.items() if n == 0]
    if unmatched:
        sources = sorted({r.source for r in records})
        shown = ", ".join(sources[:30]) + (f", ... ({len(sources)} in all)" if len(sources) > 30 else "")
        raise ConfigError(f"convert: exclude {unmatched} matches no source; sources are: {shown}")
    keep = [i for i, r in enumerate(records) if not any(_source_matches(r.source, x) for x in exclude)]
    return [records[i] for i in keep], [origins[i] for i in keep], counts


def _sample(records: list[Record], n: int, seed: int) -> list[Record]:
    """A seeded sample of n records, in their original order (all of them when n >= len)."""
    if n >= len(records):
        return records
    picked = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in picked]


def run_convert(cfg: ConvertConfig) -> dict[str, Any]:
    if not cfg.out:
        raise ConfigError("convert: 'out' (output file) is required")
    if not (cfg.candidates or cfg.targets or cfg.inputs):
        raise ConfigError("convert: give at least one of candidates, targets, inputs")
    if cfg.on_error not in ("raise", "quarantine"):
        raise ConfigError(f"convert: on_error must be raise or quarantine, not {cfg.on_error!r}")
    if cfg.input_format is not None and cfg.input_format not in INPUT_FORMATS:
        raise ConfigError(f"convert: unknown input_format {cfg.input_format!r}; "
                          f"known: {', '.join(INPUT_FORMATS)}")
    if cfg.sample is not None and cfg.sample < 1:
        raise ConfigError(f"convert: sample must be a positive number of records, not {cfg.sample}")
    records, origins, facts = _gather(cfg)
    if not records:
        hints = "".join(f"\n  hint: {h}" for h in facts.get("hints", []))
        raise NoRecordsError("convert: no records to write: " + "; ".join(facts["_per_input"])
                             + (f" (see {', '.join(facts['quarantine'])})" if facts.get("quarantine") else "")
                             + hints)
    del facts["_per_input"]
    records, origins, excluded = _exclude(records, origins, cfg.exclude)
    if excluded:
        facts["excluded"] = excluded
    check_unique_ids_across(records, origins)
    if not records:
        raise NoRecordsError(f"convert: no records left after excluding {cfg.exclude}")
    if cfg.sample is not None:
        before = len(records)
        records = _sample(records, cfg.sample, cfg.seed)
        facts["sample"] = {"asked": cfg.sample, "kept": len(records), "of": before, "seed": cfg.seed}
    n = write_records(records, cfg.out)
    by_source = dict(sorted(Counter(r.source for r in records).items()))
    result = {"out": cfg.out, "records": n, "by_source": by_source, **facts}
    save_config(cfg, f"{cfg.out}.config.yaml", extra={k: v for k, v in result.items() if k != "by_source"})
    return result
