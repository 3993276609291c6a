"""The score folder: the one artifact every selector writes and `select` / `report` read.

    <out>/score_summary.json        {"selector": ..., "pool_rows": N, "tasks": {task: {"scores": path, ...}}, ...}
    <out>/<task>/scores.parquet     id string, source string, score float32, best_subtask string
    <out>/<task>/subtask_scores.parquet   optional: id string, then one float32 column per subtask
                                    (the subtask's score before the reduction to `score`), same rows;
                                    `select --set order=round_robin` needs it
    <out>/manifests/pool.json       {"input": {"path": <pool records file>}} (lets select find the pool)

LESS's `less-ray score` writes it; so does every other selector (random, RDS, k-center, EL2N, ...);
`score_blocks` reads a task's scores back, block by block.
A task-agnostic selector writes one task (named after the selector, or `all`). Rows come in
blocks (one Parquet row group each, with statistics the report uses); a finite score is required
for every row: a selector that cannot score a row must say so, not write NaN.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import storage

SCHEMA_FIELDS = (("id", "string"), ("source", "string"), ("score", "float32"), ("best_subtask", "string"))
SUBTASK_SCORES = "subtask_scores.parquet"


def _column(values):
    """A string column: Arrow arrays as they are (a million ids need no Python objects), else built."""
    import pyarrow as pa
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == pa.string() else values.cast(pa.string())
    return pa.array(list(values), pa.string())


class ScoreFolderWriter:
    """Streams per-task score blocks into `<out>/<task>/scores.parquet`, atomically per file."""

    def __init__(self, out: str | Path, tasks: Sequence[str], pool: str | None = None):
        import pyarrow as pa
        self.out = storage.location(out)
        self.tasks = list(tasks)
        self.pool = pool
        self.schema = pa.schema([(n, getattr(pa, t)()) for n, t in SCHEMA_FIELDS])
        self._writers: dict[str, Any] = {}
        self._temp: dict[str, Path] = {}  # task -> its scores file being written (local; uploaded at close)
        self._sub: dict[str, tuple[Any, Path, int]] = {}  # task -> (writer, local file, rows) of subtask scores
        self._rows = {t: 0 for t in self.tasks}

    def write(self, task: str, ids: Sequence[str], sources: Sequence[str], scores,
              best_subtask: Sequence[str] | None = None, subtask_scores: dict[str, Any] | None = None) -> None:
        """One block of a task's rows; `subtask_scores` (subtask -> scores of these rows, the same
        subtasks in every block of the task, or never) also goes to its subtask_scores.parquet."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        if task not in self._rows:
            raise KeyError(f"task {task!r} is not one of {self.tasks}")
        scores = np.asarray(scores, dtype=np.float32)
        if not (len(ids) == len(sources) == len(scores)):
            raise ValueError(f"{task}: {len(ids)} ids, {len(sources)} sources, {len(scores)} scores")
        bad = np.flatnonzero(~np.isfinite(scores))
        if len(bad):
            raise ValueError(f"{task}: non-finite score for ids {[ids[i] for i in bad[:5]]} "
                             f"({len(bad)} rows): refusing to write NaN/inf scores")
        if task not in self._writers:
            self._temp[task] = storage.spool_file(self.out / task / "scores.parquet")
            self._writers[task] = pq.ParquetWriter(self._temp[task], self.schema)
        best = best_subtask if best_subtask is not None else [task] * len(ids)
        self._writers[task].write_table(pa.table([_column(ids), _column(sources), pa.array(scores), _column(best)],
                                                 schema=self.schema))
        if (subtask_scores is not None) != (task in self._sub) and self._rows[task]:
            raise ValueError(f"{task}: subtask scores given for some blocks only")
        if subtask_scores is not None:
            self._write_subtasks(task, ids, subtask_scores)
        self._rows[task] += len(ids)

    def _write_subtasks(self, task: str, ids, subtask_scores: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        cols = {k: np.asarray(v, dtype=np.float32) for k, v in subtask_scores.items()}
        if not cols or "id" in cols or any(len(v) != len(ids) or not np.isfinite(v).all() for v in cols.values()):
            raise ValueError(f"{task}: subtask scores must be finite, one per row, for named subtasks (not 'id')")
        schema = pa.schema([("id", pa.string())] + [(k, pa.float32()) for k in cols])
        if task not in self._sub:
            tmp = storage.spool_file(self.out / task / SUBTASK_SCORES)
            self._sub[task] = (pq.ParquetWriter(tmp, schema), tmp, 0)
        w, tmp, rows = self._sub[task]
        if not w.schema.equals(schema):
            raise ValueError(f"{task}: subtask scores name {list(cols)}, earlier blocks {w.schema.names[1:]}")
        w.write_table(pa.table([_column(ids)] + [pa.array(v) for v in cols.values()], schema=schema))
        self._sub[task] = (w, tmp, rows + len(ids))

    def close(self, summary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Rename the files into place and write score_summary.json (plus `summary`'s keys)."""
        for task, w in self._writers.items():
            w.close()
            storage.upload(self._temp[task], self.out / task / "scores.parquet")
        for task in self.tasks:  # a rerun without them leaves no earlier run's subtask scores behind
            if task in self._sub:
                w, tmp, _ = self._sub[task]
                w.close()
                storage.upload(tmp, self.out / task / SUBTASK_SCORES)
            else:
                storage.remove(self.out / task / SUBTASK_SCORES)
        missing = [t for t in self.tasks if t not in self._writers]
        if missing:
            raise ValueError(f"no scores were written for task(s) {missing}")
        rows = set(self._rows.values())
        if len(rows) != 1:
            raise ValueError(f"tasks hold different row counts: {self._rows}")
        out = dict(summary or {})
        out.setdefault("pool_rows", rows.pop())
        out["tasks"] = {t: {**out.get("tasks", {}).get(t, {}), "scores": str(self.out / t / "scores.parquet")}
                        for t in self.tasks}
        if self.pool:
            storage.write_atomic(self.out / "manifests" / "pool.json", json.dumps({"input": {"path": str(self.pool)}}))
        storage.write_atomic(self.out / "score_summary.json", json.dumps(out, indent=2, default=str))
        return out


def score_blocks(path: str | Path, block_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """A task's `scores.parquet` (a local file), `block_rows` rows at a time, in file order:
    {"id": str array, "source": object array, "score": float64 array} per block."""
    import pyarrow.parquet as pq
    for b in pq.ParquetFile(path).iter_batches(batch_size=block_rows):
        yield {"id": np.asarray(b.column("id").to_pylist(), dtype=str),
               "source": np.asarray(b.column("source").to_pylist(), dtype=object),
               "score": b.column("score").to_numpy().astype(np.float64)}
