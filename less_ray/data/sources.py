"""Candidate-pool adapters: each public data set in shared/data -> validated `Record`s.

One `load_<name>(data_root)` per set, registered in `CANDIDATE_SOURCES`. Every record keeps a
stable id (the data set's own id, else `<source>:<position>`: 1-based line for line files,
0-based index for JSON arrays). Duplicate content is kept: counts match each SOURCE.md.
Nothing is dropped silently. A row whose response is empty (nothing to train on: e.g. P3's
TREC template whose labels were lost upstream, two Code Alpaca rows, four HH-RLHF dialogues
ending in an empty reply) is skipped *and counted*, with file, position and reason, in
`SourceLoad.skipped`; any other row that cannot become a valid record raises DataFileError
listing every such row. So `rows` equals the SOURCE.md count and `records + skipped = rows`.

Each adapter turns one native row into messages with a `<name>_messages(row)` function, and
`NATIVE_FORMATS` registers the same functions so that a *user's* file in that data set's native
format (`--input-format gsm8k`, or `gsm8k:my_file.jsonl`) is formatted exactly as the pool's copy
is: the readers in `io.py` (registry: `formats.py`) and the adapters here share one code path per format.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from less_ray.data.schema import DataFileError, DataProblem, Record, RecordError, chat, make_record

ENV_DATA_ROOT = "LESS_RAY_DATA_ROOT"

def default_data_root() -> Path:
    """`$LESS_RAY_DATA_ROOT`, else `<repo root>/../shared/data`."""
    env = os.environ.get(ENV_DATA_ROOT)
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not root.is_dir():
        how = f"${ENV_DATA_ROOT}={env}" if env else f"default {root} (set ${ENV_DATA_ROOT} to override)"
        raise FileNotFoundError(f"data root not found: {how}; it must hold one folder per data set "
                                "(flan_v2_cot/, oasst_sample/, ...) as described in shared/data/README.md")
    return root


@dataclass
class SourceLoad:
    """What an adapter produced: the records, the rows skipped for having no response, and
    how many rows it read (= the SOURCE.md count)."""
    records: list[Record] = field(default_factory=list)
    skipped: list[DataProblem] = field(default_factory=list)
    rows: int = 0

    def extend(self, other: "SourceLoad") -> "SourceLoad":
        self.records += other.records
        self.skipped += other.skipped
        self.rows += other.rows
        return self


_NO_RESPONSE = "empty or whitespace-only assistant turn"


class _Collector:
    """Builds records for one data set, collecting problems instead of stopping at the first."""

    def __init__(self, data_root: Path, by_index: bool = False):
        self.root = Path(data_root)
        self.by_index = by_index  # JSON arrays: positions are 0-based indices, not lines
        self.out = SourceLoad()
        self.problems: list[DataProblem] = []

    def add(self, path: Path, pos: int, source: str, build: Callable[[], list[dict[str, str]]],
            id: str | None = None) -> None:
        self.out.rows += 1
        try:
            self.out.records.append(make_record(source, build(), id=id or f"{source}:{pos}"))
        except RecordError as e:
            if _NO_RESPONSE in str(e):  # nothing to train on: skipped by policy, and counted
                self.out.skipped.append(self._where(path, pos, f"no response to train on ({e})"))
            else:
                self.problems.append(self._where(path, pos, f"RecordError: {e}"))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            self.problems.append(self._where(path, pos, f"{type(e).__name__}: {e}"))

    def problem(self, path: Path, pos: int, reason: str, raw: str = "") -> None:
        self.out.rows += 1
        self.problems.append(self._where(path, pos, reason, raw))

    def _where(self, path: Path, pos: int, reason: str, raw: str = "") -> DataProblem:
        where = f"[index {pos}] " if self.by_index else ""
        return DataProblem(str(path), pos, where + reason, raw[:200])

    def done(self) -> SourceLoad:
        if self.problems:
            raise DataFileError(self.problems)
        return self.out


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a text file, plain or .gz; the final newline ends no row."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    yield from enumerate(lines, 1)


def _jsonl(col: _Collector, path: Path) -> Iterator[tuple[int, Any]]:
    for n, line in _lines(path):
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            col.problem(path, n, f"invalid JSON: {e}", line)


def _json_array(path: Path) -> list[Any]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFileError([DataProblem(str(path), e.lineno, f"invalid JSON: {e}")]) from e
    if not isinstance(rows, list):
        raise DataFileError([DataProblem(str(path), 0, f"expected a JSON array, got {type(rows).__name__}")])
    return rows


def _with_input(instruction: str, inp: str) -> str:
    """Alpaca / Self-Instruct: the instruction, then a blank line and the input when there is one."""
    return f"{instruction}\n\n{inp}" if inp.strip() else instruction


def _field(row: Any, key: str, kind: type = str, optional: bool = False) -> Any:
    """row[key], checked: a RecordError naming the field when it is missing or of the wrong type."""
    if not isinstance(row, dict):
        raise RecordError(f"expected a JSON object, got {type(row).__name__}")
    if row.get(key) is None:
        if optional:
            return None
        raise RecordError(f"missing field '{key}'")
    value = row[key]
    if not isinstance(value, kind):
        raise RecordError(f"field '{key}' must be a {'string' if kind is str else kind.__name__}, "
                          f"got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# One `<name>_messages(row)` per native format: the adapters below and the user-file readers in
# io.py (through NATIVE_FORMATS, registered in formats.py) both call these, so a format is written down once.

def flan_v2_cot_messages(fields: list[str]) -> list[dict[str, str]]:
    """One Flan CoT TSV row: question, answer, rationale -> "rationale So the answer is X."."""
    if len(fields) != 3:
        raise RecordError(f"expected 3 tab-separated fields (question, answer, rationale), got {len(fields)}")
    # Newlines are stored as the two characters backslash-n (SOURCE.md).
    q, a, r = (f.replace("\\n", "\n").strip() for f in fields)
    return chat(q, f"{r} So the answer is {a}.")


def load_flan_v2_cot(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    for path in sorted((col.root / "flan_v2_cot" / "cot_data").glob("*_train.tsv")):
        source = f"flan_v2_cot/{path.stem.removesuffix('_train')}"
        for n, line in _lines(path):
            fields = line.split("\t")
            if len(fields) != 3:  # a broken row would shift every field: refuse the file
                col.problem(path, n, f"expected 3 tab-separated fields, got {len(fields)}", line)
                continue
            col.add(path, n, source, lambda f=fields: flan_v2_cot_messages(f))
    return col.done()


def _oasst_path(root: dict) -> list[dict[str, str]]:
    """The top-ranked root->leaf path of one OASST tree, ending on an assistant turn."""
    msgs, node = [], root
    while True:
        msgs.append({"role": "user", "content": node["text"]})
        replies = [(i, r) for i, r in enumerate(node.get("replies") or [])
                   if r["role"] == "assistant" and not r.get("deleted")]
        if not replies:
            msgs.pop()  # a prompt nobody answered ends the conversation
            break
        # Lowest rank wins (0 = best); missing ranks after ranked ones; ties -> list order.
        _, best = min(replies, key=lambda ir: (ir[1].get("rank") is None, ir[1].get("rank") or 0, ir[0]))
        msgs.append({"role": "assistant", "content": best["text"]})
        node = next((r for r in best.get("replies") or []
                     if r["role"] == "prompter" and not r.get("deleted")
                     and any(a["role"] == "assistant" and not a.get("deleted") for a in r.get("replies") or [])),
                    None)
        if node is None:
            break
    return msgs


def oasst_messages(tree: Any) -> list[dict[str, str]]:
    """One OASST message tree -> its top-ranked path."""
    return _oasst_path(_field(tree, "prompt", dict))


def load_oasst(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    path = col.root / "oasst_sample" / "en_100_tree.jsonl"
    for n, tree in _jsonl(col, path):
        col.add(path, n, "oasst", lambda t=tree: oasst_messages(t), id=tree.get("message_tree_id"))
    return col.done()


_CALC = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n#### *(.+?)\s*$")


def _gsm8k_answer(answer: str) -> str:
    m = _FINAL.search(answer)
    if m is None:
        raise ValueError("answer has no final '#### <number>' line")
    return f"{_CALC.sub('', answer[:m.start()]).strip()}\nSo the answer is {m.group(1)}."


def gsm8k_messages(row: Any) -> list[dict[str, str]]:
    """question -> worked answer without calculator annotations, ending "So the answer is X."."""
    question, answer = _field(row, "question"), _field(row, "answer")
    try:
        return chat(question, _gsm8k_answer(answer))
    except ValueError as e:
        raise RecordError(str(e)) from None


def load_gsm8k(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    path = col.root / "gsm8k" / "train.jsonl"
    for n, row in _jsonl(col, path):
        col.add(path, n, "gsm8k", lambda r=row: gsm8k_messages(r))
    return col.done()


def _lima_messages(turns: list[str]) -> list[dict[str, str]]:
    if len(turns) % 2:  # one multi-turn row ends on an unanswered user turn (SOURCE.md)
        turns = turns[:-1]
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def lima_messages(row: Any) -> list[dict[str, str]]:
    """`conversations`: alternating user/assistant strings; a trailing unanswered turn is dropped."""
    return _lima_messages(_field(row, "conversations", list))


def load_lima(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    path = col.root / "lima" / "lima_data.jsonl"
    for n, row in _jsonl(col, path):
        col.add(path, n, f"lima/{row.get('source', 'unknown')}", lambda r=row: lima_messages(r))
    return col.done()


def super_ni_messages(row: Any) -> list[dict[str, str]]:
    """open-instruct `messages`, as is."""
    return _field(row, "messages", list)


def load_super_ni(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    path = col.root / "super_ni_sample" / "super_ni_data_1000.jsonl"
    for n, row in _jsonl(col, path):
        col.add(path, n, "super_ni", lambda r=row: super_ni_messages(r), id=row.get("id"))
    return col.done()


_EOT = "<|endoftext|>"


def _p3_completion(c: str) -> str:
    c = c.rstrip()
    return (c[:-len(_EOT)] if c.endswith(_EOT) else c).strip()


def p3_messages(row: Any) -> list[dict[str, str]]:
    """prompt -> completion without its trailing <|endoftext|>."""
    return chat(_field(row, "prompt"), _p3_completion(_field(row, "completion")))


def load_p3(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    for path in sorted((col.root / "p3_t0_sample" / "data_per_template").glob("*.jsonl")):
        for n, row in _jsonl(col, path):
            col.add(path, n, f"p3/{path.stem}", lambda r=row: p3_messages(r))
    return col.done()


def self_instruct_seed_messages(row: Any) -> list[dict[str, str]]:
    """instruction + the one instance's input (Alpaca's join) -> the instance's output."""
    instruction, instances = _field(row, "instruction"), _field(row, "instances", list)
    if len(instances) != 1:  # every seed task has exactly one instance
        raise RecordError(f"field 'instances' must hold exactly one instance, got {len(instances)}")
    inst = instances[0]
    return chat(_with_input(instruction, _field(inst, "input", optional=True) or ""), _field(inst, "output"))


def load_self_instruct_seed(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    path = col.root / "self_instruct_seed" / "seed_tasks.jsonl"
    for n, row in _jsonl(col, path):
        col.add(path, n, "self_instruct_seed", lambda r=row: self_instruct_seed_messages(r), id=row.get("id"))
    return col.done()


def alpaca_messages(row: Any, response_key: str = "output") -> list[dict[str, str]]:
    """Alpaca: `instruction`, optional `input` (joined as LESS / Stanford Alpaca's data does:
    instruction, a blank line, input), `output` (GPTeacher: `response`)."""
    instruction = _field(row, "instruction")
    inp = _field(row, "input", optional=True) or ""
    return chat(_with_input(instruction, inp), _field(row, response_key))


def gpteacher_messages(row: Any) -> list[dict[str, str]]:
    return alpaca_messages(row, "response")  # GPTeacher names the answer `response`, not `output`


def _alpaca(data_root: Path, rel: str, source: str, response_key: str) -> SourceLoad:
    col = _Collector(data_root, by_index=True)
    path = col.root / rel
    for i, row in enumerate(_json_array(path)):
        col.add(path, i, source, lambda r=row: alpaca_messages(r, response_key))
    return col.done()


def load_code_alpaca(data_root: Path) -> SourceLoad:
    return _alpaca(data_root, "code_alpaca_2k/code_alpaca_2k.json", "code_alpaca", "output")


GPTEACHER_FILES = {
    "codegen": "Codegen/codegen-instruct.json",
    "roleplay": "Roleplay/roleplay-simple-deduped-roleplay-instruct.json",
    "toolformer": "Toolformer/toolformer-dedupe-only-dataset.json",
}


def load_gpteacher(data_root: Path) -> SourceLoad:
    out = SourceLoad()
    for part, rel in GPTEACHER_FILES.items():
        out.extend(_alpaca(data_root, f"gpteacher/{rel}", f"gpteacher/{part}", "response"))
    return out


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_messages(dialogue: str) -> list[dict[str, str]]:
    parts = _HH_TURN.split(dialogue)
    if parts[0].strip():
        raise ValueError("text before the first '\\n\\nHuman:' turn")
    msgs: list[dict[str, str]] = []
    for who, text in zip(parts[1::2], parts[2::2]):
        role, text = ("user" if who == "Human" else "assistant"), text.strip()
        if msgs and msgs[-1]["role"] == role:  # 8 dialogues have two Assistant turns in a row: merge
            msgs[-1]["content"] += "\n\n" + text
        else:
            msgs.append({"role": role, "content": text})
    return msgs


def hh_rlhf_messages(row: Any) -> list[dict[str, str]]:
    """The `chosen` dialogue ("\n\nHuman: ...\n\nAssistant: ..."), multi-turn."""
    try:
        return _hh_messages(_field(row, "chosen"))
    except ValueError as e:
        if isinstance(e, RecordError):
            raise
        raise RecordError(f"field 'chosen': {e}") from None


def load_hh_rlhf(data_root: Path) -> SourceLoad:
    col = _Collector(data_root)
    path = col.root / "hh_rlhf_harmless_test" / "harmless-base" / "test.jsonl.gz"
    for n, row in _jsonl(col, path):
        col.add(path, n, "hh_rlhf", lambda r=row: hh_rlhf_messages(r))
    return col.done()


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}


def sharegpt_messages(row: Any) -> list[dict[str, str]]:
    """ShareGPT: `conversations` of {from: human|gpt|system, value} (user/assistant accepted too);
    an optional top-level `system` string becomes the first turn."""
    turns = _field(row, "conversations", list)
    system = _field(row, "system", optional=True)
    msgs = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"conversations[{i}] must be an object with 'from' and 'value', "
                              f"got {type(turn).__name__}")
        who, value = turn.get("from"), turn.get("value")
        if who is None or value is None:
            raise RecordError(f"conversations[{i}] has no '{'from' if who is None else 'value'}'")
        role = SHAREGPT_ROLES.get(who.lower()) if isinstance(who, str) else None
        if role is None:
            raise RecordError(f"conversations[{i}].from is {who!r}; expected human, gpt or system "
                              "(user and assistant are accepted too)")
        if not isinstance(value, str):
            raise RecordError(f"conversations[{i}].value must be a string, got {type(value).__name__}")
        msgs.append({"role": role, "content": value})
    return msgs


@dataclass(frozen=True)
class NativeFormat:
    """How a user's file in a data set's (or a common) native format becomes records.

    `messages(row)` is the very function the adapter uses. Rows come from JSONL lines, a JSON
    array (`.json`), Parquet rows (`.parquet`) or, for `container="tsv"`, tab-separated lines.
    `passthrough` fields of a row are kept as the record's (id, source, task, subtask);
    `id_key` names the data set's own id field when it is not `id`.
    """
    name: str
    title: str  # how a person names it ("Alpaca", "GSM8K")
    messages: Callable[[Any], list[dict[str, str]]]
    keys: str  # the fields a row has, as the help text shows them
    container: str = "json"  # json | tsv
    id_key: str | None = None
    passthrough: tuple[str, ...] = ("id", "source", "task", "subtask")


_NATIVE = [
    NativeFormat("alpaca", "Alpaca", alpaca_messages, "instruction, input (optional), output"),
    NativeFormat("sharegpt", "ShareGPT", sharegpt_messages, "conversations: [{from: human|gpt|system, value}]"),
    NativeFormat("flan_v2_cot", "Flan v2 CoT", flan_v2_cot_messages, "TSV: question<TAB>answer<TAB>rationale",
                 container="tsv", passthrough=()),
    NativeFormat("oasst", "an OpenAssistant message tree", oasst_messages, "message_tree_id, prompt: {text, replies}",
                 id_key="message_tree_id"),
    NativeFormat("gsm8k", "GSM8K", gsm8k_messages, "question, answer ('... #### N')"),
    NativeFormat("lima", "LIMA", lima_messages, "conversations: [str, str, ...]",
                 passthrough=("id", "task", "subtask")),  # LIMA's `source` is its sub-collection
    NativeFormat("super_ni", "Super-NaturalInstructions (open-instruct)", super_ni_messages, "id, messages"),
    NativeFormat("p3", "P3 / T0", p3_messages, "prompt, completion (ending <|endoftext|>)"),
    NativeFormat("self_instruct_seed", "Self-Instruct seed tasks", self_instruct_seed_messages,
                 "instruction, instances: [{input, output}]"),
    NativeFormat("code_alpaca", "Code Alpaca", alpaca_messages, "instruction, input, output"),
    NativeFormat("gpteacher", "GPTeacher", gpteacher_messages, "instruction, input, response"),
    NativeFormat("hh_rlhf", "HH-RLHF", hh_rlhf_messages, "chosen ('\\n\\nHuman: ...\\n\\nAssistant: ...')"),
]
NATIVE_FORMATS: dict[str, NativeFormat] = {f.name: f for f in _NATIVE}


CANDIDATE_SOURCES: dict[str, Callable[[Path], SourceLoad]] = {
    "flan_v2_cot": load_flan_v2_cot,
    "oasst": load_oasst,
    "gsm8k": load_gsm8k,
    "lima": load_lima,
    "super_ni": load_super_ni,
    "p3": load_p3,
    "self_instruct_seed": load_self_instruct_seed,
    "code_alpaca": load_code_alpaca,
    "gpteacher": load_gpteacher,
    "hh_rlhf": load_hh_rlhf,
}


def load_candidates(data_root: Path | None = None, names: list[str] | None = None) -> SourceLoad:
    """All (or the named) candidate sets, concatenated in registry order."""
    out = SourceLoad()
    root = Path(data_root) if data_root is not None else default_data_root()
    unknown = [n for n in names or [] if n not in CANDIDATE_SOURCES]
    if unknown:
        raise KeyError(f"unknown candidate source(s) {unknown}; known: {list(CANDIDATE_SOURCES)}")
    wanted = set(names) if names is not None else set(CANDIDATE_SOURCES)
    for name, load in CANDIDATE_SOURCES.items():
        if name in wanted:
            out.extend(load(root))
    return out
