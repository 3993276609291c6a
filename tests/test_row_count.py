"""count_records: the one pool row counter agrees with the reader, format by format."""
import gzip
import json
import random

import pytest

from less_ray.data.count import count_records
from less_ray.data.io import iter_records, read_records, write_parquet
from less_ray.data.schema import DataFileError, make_record

MSGS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _row(i, **extra):
    return json.dumps({"id": f"r{i}", "source": "s", "messages": MSGS, **extra})


def _alpaca(i):
    return {"instruction": f"do {i}", "input": "", "output": f"done {i}"}


def _read_count(path, format=None):
    """Records the reader keeps, after checking its only rejections are blank lines."""
    rep = read_records(path, format=format, on_error="collect")
    assert all(p.reason == "empty line" for p in rep.problems), rep.problems[:3]
    return len(rep.records)


def _iter_count(path, format=None):
    return sum(1 for _ in iter_records(path, format=format))


def test_jsonl_with_blank_lines_and_a_last_line_without_newline(tmp_path):
    path = tmp_path / "pool.jsonl"
    text = ("\n" + _row(1) + "\n\n   \n\t\r\n" + _row(2) + "\r\n" + _row(3) + "\n\n\n" + _row(4))
    path.write_text(text, encoding="utf-8")
    assert count_records(path) == _read_count(path) == 4
    clean = tmp_path / "clean.jsonl"  # iter_records refuses blank lines; without them it agrees
    clean.write_text(_row(1) + "\n" + _row(2) + "\n" + _row(3), encoding="utf-8")
    assert count_records(clean) == _iter_count(clean) == 3
    ends_blank = tmp_path / "ends_blank.jsonl"  # whitespace after the last newline: no row
    ends_blank.write_text(_row(1) + "\n  \t", encoding="utf-8")
    assert count_records(ends_blank) == _read_count(ends_blank) == 1


def test_empty_and_blank_only_files_count_zero(tmp_path):
    for i, text in enumerate(["", "\n", " \n\n\t", "\ufeff", "\ufeff\n  \n"]):
        path = tmp_path / f"e{i}.jsonl"
        path.write_text(text, encoding="utf-8")
        assert count_records(path) == _read_count(path) == 0, repr(text)
    arr = tmp_path / "empty.json"
    arr.write_text("[\n]\n", encoding="utf-8")
    assert count_records(arr) == _read_count(arr, "alpaca") == 0


def test_pretty_printed_json_array(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps([_alpaca(i) for i in range(7)], indent=4), encoding="utf-8")
    assert count_records(path, format="alpaca") == _iter_count(path, "alpaca") == 7
    assert count_records(f"alpaca:{path}") == 7
    assert count_records(path) == 7  # the container does not depend on the format asked for


def test_one_line_json_array_with_brackets_and_commas_in_strings(tmp_path):
    rows = [_alpaca(i) for i in range(5)] + [{"instruction": 'a, [b], {c} "d\\"', "output": "],}{,"}]
    path = tmp_path / "one_line.json"
    path.write_text(json.dumps(rows), encoding="utf-8")
    assert "\n" not in path.read_text()
    assert count_records(path, format="alpaca") == _iter_count(path, "alpaca") == 6


def test_alpaca_prefixed_paths(tmp_path):
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps([_alpaca(i) for i in range(3)], indent=2), encoding="utf-8")
    lines = tmp_path / "a.jsonl"
    lines.write_text("".join(json.dumps(_alpaca(i)) + "\n" for i in range(4)) + "\n", encoding="utf-8")
    assert count_records(f"alpaca:{arr}") == _iter_count(f"alpaca:{arr}") == 3
    assert count_records(f"alpaca:{lines}") == _read_count(f"alpaca:{lines}") == 4
    with pytest.raises(FileNotFoundError):
        count_records(f"alpaca:{tmp_path / 'missing.json'}")


def test_gzip_whatever_the_name_and_byte_order_mark(tmp_path):
    body = ("\ufeff" + _row(1) + "\n\n" + _row(2) + "\n" + _row(3)).encode("utf-8")
    for name in ("g.jsonl", "g.jsonl.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(body))
        assert count_records(path) == _read_count(path) == 3
    plain = tmp_path / "bom.jsonl"
    plain.write_bytes(body)
    assert count_records(plain) == _read_count(plain) == 3
    arr = tmp_path / "a.json.gz"
    arr.write_bytes(gzip.compress(b"\xef\xbb\xbf" + json.dumps([_alpaca(1), _alpaca(2)]).encode()))
    assert count_records(arr, format="alpaca") == _iter_count(arr, "alpaca") == 2


def test_parquet_schema_and_native_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "pool.parquet"
    write_parquet([make_record("s", MSGS, id=f"r{i}") for i in range(9)], path)
    assert count_records(path) == _iter_count(path) == 9
    alp = tmp_path / "alp.parquet"
    pq.write_table(pa.Table.from_pylist([_alpaca(i) for i in range(4)]), alp)
    assert count_records(f"alpaca:{alp}") == _iter_count(f"alpaca:{alp}") == 4


def test_tsv_and_other_native_jsonl_formats(tmp_path):
    tsv = tmp_path / "cot.tsv"
    tsv.write_text("q1\ta1\tr1\n\nq2\ta2\tr2", encoding="utf-8")
    assert count_records(f"flan_v2_cot:{tsv}") == _read_count(f"flan_v2_cot:{tsv}") == 2
    with pytest.raises(ValueError, match="cannot tell the format from the name"):
        count_records(tsv)  # as the reader: a .tsv needs its format named
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"conversations": [{"from": "human", "value": f"q{i}"},
                                                          {"from": "gpt", "value": f"r{i}"}]}) + "\n"
                            for i in range(5)), encoding="utf-8")
    assert count_records(f"sharegpt:{chat}") == _iter_count(f"sharegpt:{chat}") == 5
    pc = tmp_path / "pc.jsonl"
    pc.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n", encoding="utf-8")
    assert count_records(pc, format="prompt_completion") == _iter_count(pc, "prompt_completion") == 1


def test_rows_are_counted_not_validated(tmp_path):
    """A bad row is still a row (the reader's rows = records + rejected, blank lines aside)."""
    path = tmp_path / "mixed.jsonl"
    path.write_text(_row(1) + "\n{not json\n\n" + _row(1) + "\n[1]\n", encoding="utf-8")
    rep = read_records(path, on_error="collect")
    blank = sum(p.reason == "empty line" for p in rep.problems)
    assert count_records(path) == rep.rows - blank == 4
    arr = tmp_path / "mixed.json"
    arr.write_text('[{"instruction": "a", "output": "b"},, {"instruction": bad}, 3,]', encoding="utf-8")
    assert count_records(arr, format="alpaca") == 3  # the empty element and the trailing comma are no rows


def test_a_file_that_cannot_be_read_to_its_end_names_file_line_and_reason(tmp_path):
    unclosed = tmp_path / "cut.json"
    unclosed.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": "d"}',
                        encoding="utf-8")
    with pytest.raises(DataFileError) as err:
        count_records(unclosed, format="alpaca")
    assert [str(p) for p in err.value.problems] == [
        f"{unclosed}:3: truncated file: the JSON array is not closed with ']'"]
    after = tmp_path / "after.json"
    after.write_text('[{"instruction": "a", "output": "b"}]\n{"x": 1}', encoding="utf-8")
    with pytest.raises(DataFileError, match=r"after.json:2: unexpected text after the JSON array's closing"):
        count_records(after, format="alpaca")
    data = gzip.compress("".join(_row(i) + "\n" for i in range(3000)).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    rep = read_records(cut, on_error="collect")
    with pytest.raises(DataFileError) as err:
        count_records(cut)
    assert [str(p) for p in err.value.problems] == [str(p) for p in rep.problems]  # the reader's own words
    assert "gzip-compressed file is damaged or truncated after line" in str(err.value)


def test_random_whitespace_files_count_as_the_line_reader_splits_them(tmp_path):
    """Blank lines of every kind (spaces, tabs, CR, form feed, a byte-order mark) on random files."""
    from less_ray.data.containers import iter_lines
    rng = random.Random(0)
    pieces = [b"x", b"{}", b" ", b"\t", b"\r", b"\n", b"\n", b"\n", b"\r\n", b" a ", b"\x0c", b"\xef\xbb\xbf"]
    for i in range(200):
        body = (b"\xef\xbb\xbf" if i % 3 == 0 else b"") + b"".join(rng.choice(pieces) for _ in range(rng.randrange(30)))
        path = tmp_path / f"f{i}.jsonl"
        path.write_bytes(body)
        expected = sum(1 for _, raw, _ in iter_lines(path) if raw.strip())
        assert count_records(path) == expected, body
        path.write_bytes(gzip.compress(body))
        assert count_records(path) == expected, body


def test_every_real_data_file_counts_as_the_reader_reads_it(root):
    """The data sets' own files, each in its native format: the count is the reader's rows."""
    from tests.test_input_formats import ADAPTER_FILES
    for name, pattern in sorted(ADAPTER_FILES.items()):
        for path in sorted(root.glob(pattern)):
            rep = read_records(path, format=name, on_error="collect", check_duplicates=False)
            blank = sum(p.reason == "empty line" for p in rep.problems)
            assert count_records(f"{name}:{path}") == rep.rows - blank, path
