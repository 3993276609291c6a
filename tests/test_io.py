"""Readers and writers: round trips and every kind of bad input, by file and line."""
import json

import pytest

from less_ray.data.io import read_records, write_records
from less_ray.data.schema import DataFileError, content_id, make_record

GOOD = {"id": "a1", "source": "s", "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"}]}


def _line(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _with(**changes):
    d = json.loads(json.dumps(GOOD))
    d.update(changes)
    return d


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


# each bad line (as raw bytes) and a fragment of the reason it must be rejected with
BAD_LINES = {
    "malformed json": (b'{"id": "x", "messages": [\n', "malformed JSON"),
    "non-object": (_line([1, 2, 3]), "expected a JSON object, got list"),
    "string line": (_line("hello"), "expected a JSON object, got str"),
    "missing messages": (_line({"id": "m", "source": "s"}), "missing field 'messages'"),
    "messages wrong type": (_line(_with(id="w", messages="hi")), "'messages' must be a list, got str"),
    "id wrong type": (_line(_with(id=["x"])), "field 'id' must be a string, got list"),
    "source wrong type": (_line(_with(id="st", source=3)), "field 'source' must be a string, got int"),
    "task wrong type": (_line(_with(id="tt", task=1.5)), "field 'task' must be a string, got float"),
    "content wrong type": (_line(_with(id="ct", messages=[{"role": "user", "content": 5},
                                                          {"role": "assistant", "content": "x"}])),
                           "messages[0].content must be a string, got int"),
    "missing role": (_line(_with(id="mr", messages=[{"content": "x"}])), "messages[0] has no 'role'"),
    "unknown role": (_line(_with(id="ur", messages=_msgs(("human", "hi"), ("assistant", "yo")))),
                     "unknown role 'human'"),
    "no assistant": (_line(_with(id="na", messages=_msgs(("user", "hi")))), "no assistant turn"),
    "empty assistant": (_line(_with(id="ea", messages=_msgs(("user", "hi"), ("assistant", "")))),
                        "empty or whitespace-only assistant turn"),
    "whitespace assistant": (_line(_with(id="wa", messages=_msgs(("user", "hi"), ("assistant", " \n\t")))),
                             "empty or whitespace-only assistant turn"),
    "empty messages": (_line(_with(id="em", messages=[])), "'messages' is empty"),
    "non-utf8": (b'{"id": "u", "source": "s", "messages": [{"role": "user", "content": "caf\xe9"}]}\n',
                 "not valid UTF-8 (byte 0xe9"),
    "duplicate id": (_line(GOOD), "duplicate id 'a1' (first seen on line 1)"),
    "empty line": (b"\n", "empty line"),
}


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_each_bad_line_is_rejected_with_file_line_and_reason(tmp_path, kind):
    raw, reason = BAD_LINES[kind]
    path = tmp_path / "data.jsonl"
    path.write_bytes(_line(GOOD) + raw + _line(_with(id="z")))
    with pytest.raises(DataFileError) as err:
        read_records(path)
    problems = err.value.problems
    assert len(problems) == 1, problems
    assert problems[0].line == 2 and problems[0].path == str(path)
    assert reason in problems[0].reason
    assert f"{path}:2: " in str(err.value)


def test_truncated_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(_line(GOOD) + _line(_with(id="b"))[:30])  # cut mid-object, no newline
    with pytest.raises(DataFileError) as err:
        read_records(path)
    (p,) = err.value.problems
    assert p.line == 2 and p.reason.startswith("truncated line")


def test_quarantine_keeps_good_lines_and_counts_bad_ones(tmp_path):
    path = tmp_path / "mixed.jsonl"
    bad = [raw for raw, _ in BAD_LINES.values()]
    path.write_bytes(_line(GOOD) + b"".join(bad) + _line(_with(id="last")))
    q = tmp_path / "side.jsonl"
    rep = read_records(path, on_error="quarantine", quarantine_path=q)
    assert [r.id for r in rep.records] == ["a1", "last"]
    assert rep.counts["rejected"] == len(bad) and rep.counts["lines"] == len(bad) + 2
    rows = [json.loads(x) for x in q.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == list(range(2, len(bad) + 2))
    assert all(r["file"] == str(path) and r["reason"] and r["raw"] for r in rows[:-1])
    assert rep.quarantine_path == str(q)


def test_error_lists_first_problems_and_counts_the_rest(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_bytes(b"".join(_line([i]) for i in range(30)))
    with pytest.raises(DataFileError) as err:
        read_records(path)
    msg = str(err.value)
    assert msg.startswith("30 bad input line(s)") and "... and 10 more" in msg
    assert f"{path}:20:" in msg and f"{path}:21:" not in msg


def test_missing_id_becomes_stable_content_hash(tmp_path):
    path = tmp_path / "noid.jsonl"
    obj = {"source": "s", "messages": GOOD["messages"]}
    path.write_bytes(_line(obj))
    (r,) = read_records(path).records
    assert r.id == content_id("s", GOOD["messages"])
    assert r.id == content_id("s", [dict(m) for m in GOOD["messages"]])  # same content, same id
    assert r.id != content_id("other", GOOD["messages"])


def test_source_defaults_to_file_stem(tmp_path):
    path = tmp_path / "mypool.jsonl"
    path.write_bytes(_line({"id": "1", "messages": GOOD["messages"]}))
    assert read_records(path).records[0].source == "mypool"


def test_prompt_completion_reader(tmp_path):
    path = tmp_path / "pc.jsonl"
    path.write_bytes(_line({"prompt": "2+2?", "completion": "4"}) + _line({"prompt": "x"})
                     + _line({"prompt": "y", "completion": "  "}))
    rep = read_records(path, format="prompt_completion", on_error="collect")
    assert [m["content"] for m in rep.records[0].messages] == ["2+2?", "4"]
    assert [(p.line, p.reason) for p in rep.problems] == [
        (2, "missing field 'completion'"), (3, "messages[1] is an empty or whitespace-only assistant turn")]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    recs = [make_record("src/a", _msgs(("system", "be brief"), ("user", "q"), ("assistant", "a"),
                                       ("user", "q2"), ("assistant", "a2")), id="r1"),
            make_record("src/b", _msgs(("user", "ü ☃"), ("assistant", "ok")), task="t", subtask="s1")]
    path = tmp_path / f"out{suffix}"
    assert write_records(recs, path) == 2
    assert read_records(path).records == recs


def test_parquet_bad_rows_are_named_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.Table.from_pylist([
        {"id": "1", "source": "s", "messages": GOOD["messages"]},
        {"id": "2", "source": "s", "messages": [{"role": "robot", "content": "x"}]},
        {"id": "1", "source": "s", "messages": GOOD["messages"]},
    ])
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataFileError) as err:
        read_records(path)
    assert [(p.line, p.reason[:12]) for p in err.value.problems] == [(2, "messages[0] "), (3, "duplicate id")]
