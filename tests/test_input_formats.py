"""Input formats users already have (Alpaca, ShareGPT, every adapter's native format), the
format hint, and `data convert --sample/--exclude` (issue 14, item 8)."""
import json

import pytest

from less_ray.cli import main
from less_ray.data import sources as S
from less_ray.data.io import (INPUT_FORMATS, DataFormatError, read_records, sniff_format,
                              split_format_spec)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _contents(rec):
    return [(m["role"], m["content"]) for m in rec.messages]


# --- Alpaca --------------------------------------------------------------------------------------
def test_alpaca_joins_instruction_and_input_as_the_pool_adapters_do(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Say bye.", "output": "Bye!", "id": "b1", "task": "t", "subtask": "s"},
        {"instruction": "Null input.", "input": None, "output": "ok"},
    ])
    recs = read_records(path, format="alpaca").records
    assert [_contents(r) for r in recs] == [
        [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")],
        [("user", "Say hi."), ("assistant", "Hi!")],
        [("user", "Say bye."), ("assistant", "Bye!")],
        [("user", "Null input."), ("assistant", "ok")],
    ]
    # the same function the code_alpaca / gpteacher / self_instruct adapters use
    assert list(recs[0].messages) == S.alpaca_messages({"instruction": "Add the numbers.", "input": "2 and 3",
                                                        "output": "5"})
    assert {r.source for r in recs} == {"mine"}  # the file's stem, as for every reader
    assert (recs[2].id, recs[2].task, recs[2].subtask) == ("b1", "t", "s")


def test_alpaca_bad_rows_name_the_field(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [
        {"input": "x", "output": "y"},
        {"instruction": "i", "output": 5},
        {"instruction": "i", "input": "x", "output": "  "},
        {"instruction": "ok", "output": "fine"},
    ])
    rep = read_records(path, format="alpaca", on_error="collect")
    assert [r.id for r in rep.records] and len(rep.records) == 1
    assert [str(p) for p in rep.problems] == [
        f"{path}:1: missing field 'instruction'",
        f"{path}:2: field 'output' must be a string, got int",
        f"{path}:3: messages[1] is an empty or whitespace-only assistant turn",
    ]


def test_alpaca_json_array_problems_name_the_line_each_element_starts_on(tmp_path):
    # alpaca_data.json as published: one indented JSON array
    rows = [{"instruction": "a", "input": "", "output": "1"}, {"instruction": "b", "input": ""},
            {"instruction": "c", "input": "x", "output": "3"}]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    rep = read_records(path, format="alpaca", on_error="collect")
    assert [_contents(r)[0][1] for r in rep.records] == ["a", "c\n\nx"]
    assert rep.record_lines == [2, 11] and rep.rows == 3
    assert [str(p) for p in rep.problems] == [f"{path}:7: missing field 'output'"]


def test_alpaca_parquet_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "Q", "input": "ctx", "output": "A"}]), path)
    (r,) = read_records(path, format="alpaca").records
    assert _contents(r) == [("user", "Q\n\nctx"), ("assistant", "A")]


# --- ShareGPT ------------------------------------------------------------------------------------
def test_sharegpt_roles_and_multi_turn(tmp_path):
    path = _jsonl(tmp_path / "chats.jsonl", [
        {"id": "c1", "conversations": [{"from": "system", "value": "Be brief."},
                                       {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                       {"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}],
         "system": "sys"},
    ])
    a, b = read_records(path, format="sharegpt").records
    assert a.id == "c1" and _contents(a) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"),
                                             ("user", "2+2?"), ("assistant", "4")]
    assert _contents(b) == [("system", "sys"), ("user", "q"), ("assistant", "a")]


def test_sharegpt_bad_turns_name_the_turn(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
        {"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]},
        {"conversations": ["q", "a"]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}]},
        {"conversations": [{"from": "human", "value": "q"}]},
    ])
    rep = read_records(path, format="sharegpt", on_error="collect")
    assert [p.reason for p in rep.problems] == [
        "conversations[1].from is 'bot'; expected human, gpt or system (user and assistant are accepted too)",
        "conversations[0] has no 'value'",
        "conversations[0] must be an object with 'from' and 'value', got str",
        "conversations[1].value must be a string, got int",
        "no assistant turn (nothing to train on)",
    ]


# --- the hint ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rows,used,hint", [
    ([{"instruction": "i", "input": "x", "output": "o"}], "jsonl",
     "line 1 has keys instruction/input/output: this looks like Alpaca; pass --input-format alpaca"),
    ([{"id": "1", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}], "alpaca",
     "line 1 has keys id/conversations: this looks like ShareGPT; pass --input-format sharegpt"),
    ([{"question": "q?", "answer": "work\n#### 4"}], "prompt_completion",
     "line 1 has keys question/answer: this looks like GSM8K; pass --input-format gsm8k"),
    ([{"source": "s", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}],
     "sharegpt", "line 1 has keys source/messages: this looks like the record schema; pass --input-format jsonl"),
])
def test_wrong_format_error_suggests_the_flag(tmp_path, rows, used, hint):
    path = _jsonl(tmp_path / "f.jsonl", rows)
    with pytest.raises(DataFormatError) as err:
        read_records(path, format=used)
    assert err.value.hint == hint
    assert str(err.value).endswith(f"\n  hint: {hint}")


def test_hint_skips_blank_lines_and_reads_tsv(tmp_path):
    path = tmp_path / "cot.tsv"
    path.write_text("\nWhat?\tB\tBecause.\n", encoding="utf-8")
    assert sniff_format(path) == ("flan_v2_cot", 2, [])
    with pytest.raises(DataFormatError) as err:
        read_records(path, format="jsonl")
    assert err.value.hint == ("line 2 has 3 tab-separated fields: this looks like Flan v2 CoT; "
                              "pass --input-format flan_v2_cot")


def test_inspect_detects_the_format_and_suggests_the_flag(tmp_path, capsys):
    path = _jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "i", "input": "", "output": "o"}] * 2)
    assert main(["data", "inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == [
        f"{path}: 2 lines, 0 valid records, 2 rejected (read as jsonl)",
        "hint: line 1 has keys instruction/input/output: this looks like Alpaca; pass --input-format alpaca",
        "no records: all 2 row(s) rejected"]
    assert main(["data", "inspect", str(path), "--input-format", "alpaca", "--json"]) == 1  # same content twice
    summary = json.loads(capsys.readouterr().out)
    assert (summary["format"], summary["detected"], summary["hint"]) == ("alpaca", "alpaca", None)
    assert summary["records"] == 1 and summary["rejected"] == 1  # the second row is a duplicate of the first
    # a p3 file read as prompt/completion parses, but would keep <|endoftext|> in every answer: said so
    p3 = _jsonl(tmp_path / "p3.jsonl", [{"prompt": "q", "completion": "a<|endoftext|>"}])
    assert main(["data", "inspect", str(p3), "--format", "prompt_completion"]) == 0
    assert ("hint: line 1 has keys prompt/completion: this looks like P3 / T0; pass --input-format p3"
            in capsys.readouterr().out)


# --- one registry: every adapter reads a user's file ---------------------------------------------
def test_every_adapter_is_a_registered_input_format():
    assert set(S.CANDIDATE_SOURCES) <= set(INPUT_FORMATS)
    assert {"jsonl", "parquet", "prompt_completion", "alpaca", "sharegpt"} <= set(INPUT_FORMATS)


# data set -> its files under shared/data, read by the user-file reader as a user would
ADAPTER_FILES = {
    "flan_v2_cot": "flan_v2_cot/cot_data/*_train.tsv", "oasst": "oasst_sample/en_100_tree.jsonl",
    "gsm8k": "gsm8k/train.jsonl", "lima": "lima/lima_data.jsonl",
    "super_ni": "super_ni_sample/super_ni_data_1000.jsonl", "p3": "p3_t0_sample/data_per_template/*.jsonl",
    "self_instruct_seed": "self_instruct_seed/seed_tasks.jsonl", "code_alpaca": "code_alpaca_2k/code_alpaca_2k.json",
    "gpteacher": "gpteacher/*/*.json", "hh_rlhf": "hh_rlhf_harmless_test/harmless-base/test.jsonl.gz",
}


@pytest.mark.parametrize("name", sorted(ADAPTER_FILES))
def test_a_users_file_in_a_data_sets_format_reads_exactly_as_the_pool_adapter(root, name):
    """Targets formatted as their pool counterpart: same messages, row for row, as the adapter."""
    load = S.CANDIDATE_SOURCES[name](root)
    paths = sorted(root.glob(ADAPTER_FILES[name]))
    if name == "gpteacher":  # the adapter's order
        paths = [root / "gpteacher" / rel for rel in S.GPTEACHER_FILES.values()]
    got, rejected = [], 0
    for path in paths:
        rep = read_records(path, format=name, on_error="collect", check_duplicates=False)
        got += [list(r.messages) for r in rep.records]
        rejected += len(rep.problems)
        assert all("empty or whitespace-only assistant turn" in p.reason for p in rep.problems), rep.problems[:3]
    assert got == [list(r.messages) for r in load.records]
    assert rejected == len(load.skipped)  # the adapter's counted skips are the reader's rejections


def test_gsm8k_targets_file_keeps_task_and_formats_the_answer_as_the_pool(tmp_path):
    path = _jsonl(tmp_path / "math_targets.jsonl", [
        {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3+2=<<3+2=5>>5\n#### 5",
         "task": "math", "subtask": "add"},
        {"question": "No final line", "answer": "just text", "task": "math"},
    ])
    rep = read_records(f"gsm8k:{path}", on_error="collect")
    (r,) = rep.records
    assert (r.task, r.subtask, r.source) == ("math", "add", "math_targets")
    assert _contents(r)[1] == ("assistant", "3+2=5\nSo the answer is 5.")
    assert [str(p) for p in rep.problems] == [f"{path}:2: answer has no final '#### <number>' line"]


def test_format_prefix(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"instruction": "i", "output": "o"}])
    assert split_format_spec(f"alpaca:{path}") == (str(path), "alpaca")
    assert split_format_spec(str(path)) == (str(path), None)
    assert split_format_spec("nosuchformat:x.jsonl") == ("nosuchformat:x.jsonl", None)
    assert len(read_records(f"alpaca:{path}").records) == 1
    with pytest.raises(ValueError, match="unknown input format 'alpacca'"):
        read_records(path, format="alpacca")


# --- data convert: mixed formats, --exclude, --sample --------------------------------------------
def _pool_files(tmp_path):
    a = _jsonl(tmp_path / "alp.json", [{"instruction": f"a{i}", "output": f"o{i}"} for i in range(6)])
    s = _jsonl(tmp_path / "chat.jsonl", [{"conversations": [{"from": "human", "value": f"q{i}"},
                                                            {"from": "gpt", "value": f"r{i}"}]} for i in range(4)])
    return a, s


def test_convert_mixes_formats_by_prefix(tmp_path, capsys):
    a, s = _pool_files(tmp_path)
    out = tmp_path / "pool.jsonl"
    assert main(["data", "convert", "--inputs", f"alpaca:{a}", f"sharegpt:{s}", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["by_source"] == {"alp": 6, "chat": 4}
    assert [_contents(r)[0][1] for r in read_records(out).records][:7] == [f"a{i}" for i in range(6)] + ["q0"]


def test_convert_exclude_and_sample(tmp_path, capsys):
    a, s = _pool_files(tmp_path)
    out = tmp_path / "pool.jsonl"
    base = ["data", "convert", "--inputs", f"alpaca:{a}", f"sharegpt:{s}", "--out", str(out)]
    assert main(base + ["--exclude", "chat"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["by_source"] == {"alp": 6} and result["excluded"] == {"chat": 4}

    assert main(base + ["--sample", "5", "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sample"] == {"asked": 5, "kept": 5, "of": 10, "seed": 3}
    first = [r.id for r in read_records(out).records]
    all_ids = [r.id for r in read_records(f"alpaca:{a}").records + read_records(f"sharegpt:{s}").records]
    assert len(first) == 5 and first == [i for i in all_ids if i in first]  # input order kept
    assert main(base + ["--sample", "5", "--seed", "3"]) == 0
    capsys.readouterr()
    assert [r.id for r in read_records(out).records] == first  # same seed, same sample
    draws = set()
    for seed in range(6):
        assert main(base + ["--sample", "5", "--seed", str(seed)]) == 0
        draws.add(tuple(r.id for r in read_records(out).records))
    assert len(draws) > 1  # the seed matters
    capsys.readouterr()

    assert main(base + ["--sample", "50"]) == 0  # more than there is: all, and said so
    assert json.loads(capsys.readouterr().out)["sample"] == {"asked": 50, "kept": 10, "of": 10, "seed": 0}

    assert main(base + ["--exclude", "chta"]) == 1
    assert "convert: exclude ['chta'] matches no source; sources are: alp, chat" in capsys.readouterr().err


def test_convert_exclude_prefix_drops_sub_sources(root, tmp_path, capsys):
    out = tmp_path / "pool.jsonl"
    assert main(["data", "convert", "--candidates", "lima", "oasst", "--exclude", "lima",
                 "--data-root", str(root), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["by_source"] == {"oasst": 100} and result["excluded"] == {"lima": 1030}


def test_unknown_extension_names_the_format_it_looks_like(tmp_path, capsys):
    path = tmp_path / "cot.tsv"
    path.write_text("What?\tB\tBecause.\n", encoding="utf-8")
    assert main(["data", "inspect", str(path)]) == 1
    assert capsys.readouterr().err.startswith(
        f"less-ray data: error: {path}: cannot tell the format from the name (line 1 looks like Flan v2 CoT: "
        "--input-format flan_v2_cot); pass --input-format, one of jsonl, parquet, prompt_completion, alpaca,")
    assert main(["data", "inspect", str(path), "--input-format", "flan_v2_cot"]) == 0
