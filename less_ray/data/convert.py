"""`less-ray data convert`: adapters, target builders or user files -> one schema file."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, save_config
from .io import check_unique_ids, read_records, write_quarantine, write_records
from .schema import Record


@dataclass
class ConvertConfig:
    out: str = ""  # output file: .jsonl or .parquet
    candidates: list[str] = field(default_factory=list)  # adapter names, or ["all"]
    targets: list[str] = field(default_factory=list)  # bbh, tydiqa, mmlu
    inputs: list[str] = field(default_factory=list)  # files in the schema or prompt/completion
    input_format: str | None = None  # jsonl | parquet | prompt_completion (default: by extension)
    data_root: str | None = None  # ../shared/data by default
    on_error: str = "raise"  # raise | quarantine
    quarantine: str | None = None  # side file for rejected lines (default: <out>.quarantine.jsonl)
    seed: int = 0  # target sampling (TydiQA's one example per language)


def _gather(cfg: ConvertConfig) -> tuple[list[Record], dict[str, Any]]:
    from .sources import CANDIDATE_SOURCES, default_data_root, load_candidates
    from .targets import build_targets

    records: list[Record] = []
    facts: dict[str, Any] = {}
    root = Path(cfg.data_root) if cfg.data_root else None
    if cfg.candidates:
        names = list(CANDIDATE_SOURCES) if cfg.candidates == ["all"] else cfg.candidates
        unknown = [n for n in names if n not in CANDIDATE_SOURCES]
        if unknown:
            raise ConfigError(f"unknown candidate set(s) {unknown}; known: {list(CANDIDATE_SOURCES)}")
        loaded = load_candidates(root or default_data_root(), names)
        records += loaded.records
        facts["source_rows"] = loaded.rows
        facts["skipped_no_response"] = len(loaded.skipped)
        if loaded.skipped:  # counted and kept beside the output, never silently gone
            write_quarantine(loaded.skipped, f"{cfg.out}.skipped.jsonl")
            facts["skipped_file"] = f"{cfg.out}.skipped.jsonl"
    for name in cfg.targets:
        kw = {"seed": cfg.seed} if name == "tydiqa" else {}
        records += build_targets(name, root or default_data_root(), **kw)
    rejected = 0
    for i, path in enumerate(cfg.inputs):
        q = cfg.quarantine
        if q and len(cfg.inputs) > 1:
            q = f"{q}.{i}"
        elif not q:
            q = f"{cfg.out}.quarantine.jsonl" if len(cfg.inputs) == 1 else f"{cfg.out}.quarantine.{i}.jsonl"
        rep = read_records(path, format=cfg.input_format, on_error=cfg.on_error, quarantine_path=q)
        records += rep.records
        rejected += len(rep.problems)
        if rep.quarantine_path:
            facts.setdefault("quarantine", []).append(f"{rep.quarantine_path} ({len(rep.problems)} lines)")
    facts["rejected"] = rejected
    return records, facts


def run_convert(cfg: ConvertConfig) -> dict[str, Any]:
    if not cfg.out:
        raise ConfigError("convert: 'out' (output file) is required")
    if not (cfg.candidates or cfg.targets or cfg.inputs):
        raise ConfigError("convert: give at least one of candidates, targets, inputs")
    if cfg.on_error not in ("raise", "quarantine"):
        raise ConfigError(f"convert: on_error must be raise or quarantine, not {cfg.on_error!r}")
    records, facts = _gather(cfg)
    check_unique_ids(records, where=cfg.out)
    n = write_records(records, cfg.out)
    by_source = dict(sorted(Counter(r.source for r in records).items()))
    result = {"out": cfg.out, "records": n, "by_source": by_source, **facts}
    save_config(cfg, f"{cfg.out}.config.yaml", extra={k: v for k, v in result.items() if k != "by_source"})
    return result
