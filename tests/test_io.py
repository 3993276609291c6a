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


# --- issue 17: bad input that used to end in a traceback or a silent outcome -----------------------
from less_ray.cli import main  # noqa: E402
from less_ray.data.io import MAX_NESTING, NoRecordsError, require_records  # noqa: E402


def test_deep_nesting_is_a_line_problem_and_quarantines_only_that_line(tmp_path):
    deep = b'{"id": "d", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}\n"
    path = tmp_path / "deep.jsonl"
    path.write_bytes(_line(GOOD) + deep + _line(_with(id="z")))
    with pytest.raises(DataFileError) as err:
        read_records(path)
    assert str(err.value) == (f"1 bad input line(s):\n  {path}:2: nesting deeper than {MAX_NESTING} "
                              "(JSON objects/arrays inside each other)")
    rep = read_records(path, on_error="quarantine", quarantine_path=tmp_path / "q.jsonl")
    assert [r.id for r in rep.records] == ["a1", "z"]
    (q,) = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert (q["line"], q["reason"][:22]) == (2, "nesting deeper than 10")
    # nesting up to the limit is fine (brackets inside strings do not count)
    ok = _with(id="ok", junk=json.loads("[" * (MAX_NESTING - 1) + "]" * (MAX_NESTING - 1)), note="[[[[" * 50)
    path.write_bytes(_line(ok))
    assert [r.id for r in read_records(path).records] == ["ok"]


def test_deep_nesting_inside_a_json_array_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": ' + "[" * 3000 + "]" * 3000
                    + ', "output": "x"},\n{"instruction": "c", "output": "d"}\n]\n', encoding="utf-8")
    rep = read_records(path, format="alpaca", on_error="collect")
    assert [r.messages[0]["content"] for r in rep.records] == ["a", "c"]
    assert [str(p) for p in rep.problems] == [
        f"{path}:3: nesting deeper than {MAX_NESTING} (JSON objects/arrays inside each other)"]


LONE = "lone surrogate \\ud800 in a JSON string (half of a UTF-16 pair; not valid Unicode, cannot be written as UTF-8)"


def test_lone_surrogate_is_a_line_problem_and_convert_leaves_no_tmp(tmp_path, capsys):
    bad = b'{"id": "s", "source": "x", "messages": [{"role": "user", "content": "a\\ud800b"}, ' \
          b'{"role": "assistant", "content": "ok"}]}\n'
    pair = b'{"id": "p", "source": "x", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}, ' \
           b'{"role": "assistant", "content": "ok"}]}\n'
    path = tmp_path / "in.jsonl"
    path.write_bytes(pair + bad)
    with pytest.raises(DataFileError) as err:
        read_records(path)
    assert [str(p) for p in err.value.problems] == [f"{path}:2: {LONE}"]
    out = tmp_path / "out" / "pool.jsonl"
    assert main(["data", "convert", "--inputs", str(path), "--out", str(out)]) == 1
    assert f"{path}:2: {LONE}" in capsys.readouterr().err
    assert not out.exists() and not list(out.parent.glob("*.tmp"))
    assert main(["data", "convert", "--inputs", str(path), "--out", str(out), "--on-error", "quarantine"]) == 0
    (r,) = read_records(out).records
    assert r.messages[0]["content"] == "\U0001F600"  # an escaped pair is a real character: kept
    assert not list(out.parent.glob("*.tmp"))


def test_writer_refuses_a_lone_surrogate_and_leaves_no_tmp(tmp_path):
    rec = make_record("s", _msgs(("user", "a\ud800"), ("assistant", "x")), id="bad")
    path = tmp_path / "w.jsonl"
    with pytest.raises(ValueError, match="record 'bad' holds '\\\\ud800', a lone surrogate"):
        write_records([rec], path)
    assert list(tmp_path.iterdir()) == []


def test_utf8_bom_on_line_1_is_stripped(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _line(GOOD) + _line(_with(id="b")))
    assert [r.id for r in read_records(path).records] == ["a1", "b"]
    arr = tmp_path / "bom.json"
    arr.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "i", "output": "o"}]).encode())
    assert len(read_records(arr, format="alpaca").records) == 1


def test_gzip_named_jsonl_is_read_transparently(tmp_path):
    import gzip
    path = tmp_path / "pool.jsonl"  # compressed, but not named .gz
    path.write_bytes(gzip.compress(_line(GOOD) + _line(_with(id="b"))))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    rep = read_records(path)
    assert [r.id for r in rep.records] == ["a1", "b"]
    named = tmp_path / "pool2.jsonl.gz"
    named.write_bytes(gzip.compress(_line({"messages": GOOD["messages"]})))
    assert [r.source for r in read_records(named).records] == ["pool2"]  # format and stem by name under .gz


def test_damaged_gzip_says_gzip_and_keeps_the_lines_before(tmp_path):
    import gzip
    data = gzip.compress(b"".join(_line(_with(id=str(i), messages=_msgs(("user", "q" * 3000 + str(i)),
                                                                         ("assistant", "a")))) for i in range(50)))
    path = tmp_path / "cut.jsonl"
    path.write_bytes(data[: len(data) // 2])
    rep = read_records(path, on_error="collect")
    (p,) = rep.problems
    assert p.line == len(rep.records) + 1 and 0 < len(rep.records) < 50
    assert p.reason.startswith(f"gzip-compressed file is damaged or truncated after line {len(rep.records)} (")


def test_empty_file_and_all_rejected_are_refused_with_counts(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    rep = read_records(empty)
    assert (rep.lines, rep.records) == (0, [])
    with pytest.raises(NoRecordsError) as err:
        require_records(rep, "pool examples")
    assert str(err.value) == f"{empty}: no pool examples: the file is empty (0 lines)"

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_line([1]) + b"\n" + _line({"instruction": "i", "input": "", "output": "o"}))
    rep = read_records(bad, on_error="quarantine", quarantine_path=tmp_path / "q.jsonl")
    with pytest.raises(NoRecordsError) as err:
        require_records(rep, "target examples")
    assert str(err.value) == (
        f"{bad}: no target examples: all 3 row(s) rejected (3 problem(s); quarantined to {tmp_path / 'q.jsonl'}); "
        f"first: {bad}:1: expected a JSON object, got list\n"
        "  hint: line 3 has keys instruction/input/output: this looks like Alpaca; pass --input-format alpaca")
    assert isinstance(err.value, DataFileError) and len(err.value.problems) == 3

    good = tmp_path / "good.jsonl"
    good.write_bytes(_line(GOOD))
    assert require_records(read_records(good)) == read_records(good).records


def test_convert_refuses_an_empty_result_with_per_input_counts(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_line([1]) + _line([2]))
    out = tmp_path / "o.jsonl"
    assert main(["data", "convert", "--inputs", str(empty), str(bad), "--on-error", "quarantine",
                 "--out", str(out)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"less-ray data: error: convert: no records to write: {empty}: empty file (0 lines); "
        f"{bad}: 2 row(s), 2 rejected (see {out}.quarantine.1.jsonl (2 lines))")
    assert not out.exists()


def test_duplicate_ids_across_convert_inputs_name_both_input_files_and_lines(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_line(_with(id="x1")) + _line(_with(id="dup")))
    b.write_bytes(_line(_with(id="y1")) + _line(_with(id="y2")) + _line(_with(id="dup")))
    out = tmp_path / "pool.jsonl"
    assert main(["data", "convert", "--inputs", str(a), str(b), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{b}:3: duplicate id 'dup' (first at {a}:2)" in err and str(out) not in err
    assert not out.exists()


@pytest.mark.parametrize("text,records,problems", [
    ('[]', [], []),
    ('[{"instruction": "a", "output": "b"},]', ["a"], ["1: malformed JSON: a comma before the array's closing ']'"]),
    ('[{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": "d"}', ["a", "c"],
     ["2: truncated file: the JSON array is not closed with ']'"]),
    ('[{"instruction": "a", "output": "b"}]\n{"x": 1}', ["a"], ["2: unexpected text after the JSON array's closing ']'"]),
    ('[{"instruction": "a", "output": "b"},\n{"instruction": bad},\n{"instruction": "c ]}\\"", "output": "d"}]',
     ["a", 'c ]}"'], ["2: malformed JSON: Expecting value at column 17"]),
])
def test_json_array_container_problems(tmp_path, text, records, problems):
    path = tmp_path / "arr.json"
    path.write_text(text, encoding="utf-8")
    rep = read_records(path, format="alpaca", on_error="collect")
    assert [r.messages[0]["content"] for r in rep.records] == records
    assert [str(p) for p in rep.problems] == [f"{path}:{p}" for p in problems]
