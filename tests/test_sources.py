"""Candidate-pool adapters against the real files in shared/data (counts from each SOURCE.md)."""
from __future__ import annotations

import collections
import gzip
import json
import re

import pytest

from less_ray.data import sources as S
from less_ray.data.schema import DataFileError, record_from_dict


@pytest.fixture(scope="module")
def loads(root):
    return {name: load(root) for name, load in S.CANDIDATE_SOURCES.items()}


@pytest.fixture(scope="module")
def pool(loads):
    return {name: ld.records for name, ld in loads.items()}


# Record counts per source, as SOURCE.md gives them (these sources have no empty responses).
SOURCE_MD_COUNTS = {
    "flan_v2_cot/aqua": 2728, "flan_v2_cot/creak": 6915, "flan_v2_cot/ecqa": 7112,
    "flan_v2_cot/gsm8k": 7473, "flan_v2_cot/qasc": 1084, "flan_v2_cot/sensemaking": 6070,
    "flan_v2_cot/strategyqa": 2061, "oasst": 100, "gsm8k": 7473, "super_ni": 1000,
    "self_instruct_seed": 175, "gpteacher/codegen": 4535, "gpteacher/roleplay": 1923,
    "gpteacher/toolformer": 7673,
    "lima/stackexchange": 400, "lima/authors": 200, "lima/wikihow": 200, "lima/writingprompts": 150,
    "lima/nlp": 50, "lima/multi_turn": 30,
}


def test_per_source_counts_match_source_md(pool):
    by_source = collections.Counter(r.source for recs in pool.values() for r in recs)
    for source, n in SOURCE_MD_COUNTS.items():
        assert by_source[source] == n, source


# SOURCE.md row counts per data set: every row is read, and is a record or a counted skip
SOURCE_MD_ROWS = {"flan_v2_cot": 33_443, "oasst": 100, "gsm8k": 7473, "lima": 1030, "super_ni": 1000,
                  "p3": 6742, "self_instruct_seed": 175, "code_alpaca": 2017,
                  "gpteacher": 4535 + 1923 + 7673, "hh_rlhf": 2312}


def test_every_source_md_row_is_a_record_or_a_counted_skip(loads):
    for name, rows in SOURCE_MD_ROWS.items():
        ld = loads[name]
        assert ld.rows == rows and len(ld.records) + len(ld.skipped) == rows, name
        assert all("no response to train on" in p.reason for p in ld.skipped), name
    skips = {name: len(ld.skipped) for name, ld in loads.items() if ld.skipped}
    assert skips == {"p3": 200, "code_alpaca": 2, "hh_rlhf": 4}
    assert len({r.source for r in loads["p3"].records}) == 33  # 34 files; TREC's lost its labels


def test_skipped_rows_really_have_no_response(root, loads):
    trec = root / "p3_t0_sample/data_per_template/trec_what_category_best_describe.jsonl"
    assert {json.loads(l)["completion"] for l in open(trec, encoding="utf-8")} == {"<|endoftext|>"}
    assert {p.path for p in loads["p3"].skipped} == {str(trec)}
    ca = json.loads((root / "code_alpaca_2k/code_alpaca_2k.json").read_text(encoding="utf-8"))
    empty_ca = [i for i, r in enumerate(ca) if not r["output"].strip()]
    assert [p.line for p in loads["code_alpaca"].skipped] == empty_ca == [237, 1859]
    with gzip.open(root / "hh_rlhf_harmless_test/harmless-base/test.jsonl.gz", "rt", encoding="utf-8") as f:
        empty = [n for n, l in enumerate(f, 1) if not json.loads(l)["chosen"].rsplit("\n\nAssistant:", 1)[1].strip()]
    assert [p.line for p in loads["hh_rlhf"].skipped] == empty == [87, 517, 926, 1104]


def test_ids_unique_and_records_validate(pool):
    recs = [r for v in pool.values() for r in v]
    assert len({r.id for r in recs}) == len(recs)
    for r in recs:
        assert record_from_dict(r.to_dict()) == r
        assert r.task is None and r.subtask is None
        assert r.messages[-1]["role"] == "assistant"


def test_ids_follow_convention(pool):
    assert pool["flan_v2_cot"][0].id == "flan_v2_cot/aqua:1"
    assert pool["code_alpaca"][0].id == "code_alpaca:0"  # JSON array: 0-based index
    assert pool["super_ni"][0].id.startswith("super_ni_task")
    assert pool["self_instruct_seed"][0].id == "seed_task_0"
    assert pool["lima"][0].id == f"{pool['lima'][0].source}:1"


def test_load_candidates_registry_order(root, pool):
    recs = S.load_candidates(root, ["hh_rlhf", "oasst"]).records
    assert [r.id for r in recs] == [r.id for r in pool["oasst"] + pool["hh_rlhf"]]
    with pytest.raises(KeyError):
        S.load_candidates(root, ["nope"])


def test_flan_unescaped(pool, root):
    aqua = pool["flan_v2_cot"][0]
    assert "\\n" not in aqua.messages[0]["content"] and "\nOptions:\n(A)" in aqua.messages[0]["content"]
    assert aqua.messages[1]["content"].endswith(" So the answer is (C).")


def test_flan_bad_row_raises(tmp_path):
    d = tmp_path / "flan_v2_cot" / "cot_data"
    d.mkdir(parents=True)
    (d / "x_train.tsv").write_text("q\ta\tr\nonly\ttwo\n", encoding="utf-8")
    with pytest.raises(DataFileError) as e:
        S.load_flan_v2_cot(tmp_path)
    assert [p.line for p in e.value.problems] == [2]
    assert "x_train.tsv:2" in str(e.value)


def test_gsm8k(pool):
    for r in pool["gsm8k"]:
        a = r.messages[1]["content"]
        assert "<<" not in a and ">>" not in a and "####" not in a
        assert re.search(r"\nSo the answer is [^\n]+\.$", a)
    assert pool["gsm8k"][0].messages[1]["content"].endswith("clips altogether in April and May.\nSo the answer is 72.")


def test_p3_strips_eot(pool):
    for r in pool["p3"]:
        assert "<|endoftext|>" not in r.messages[1]["content"]
        assert r.messages[1]["content"] == r.messages[1]["content"].strip()
    assert pool["p3"][0].source == "p3/adversarial_qa_dbert_answer_the_following_q"


def test_oasst_top_ranked_path(pool, root):
    first_tree = json.loads(open(root / "oasst_sample/en_100_tree.jsonl", encoding="utf-8").readline())
    r = pool["oasst"][0]
    assert r.id == first_tree["message_tree_id"]
    assert r.messages[0] == {"role": "user", "content": first_tree["prompt"]["text"]}
    best = min(first_tree["prompt"]["replies"], key=lambda m: m["rank"])
    assert r.messages[1]["content"] == best["text"]
    for r in pool["oasst"]:
        assert [m["role"] for m in r.messages] == ["user", "assistant"] * (len(r.messages) // 2)


def test_lima_multi_turn(pool):
    multi = [r for r in pool["lima"] if r.source == "lima/multi_turn"]
    assert len(multi) == 30 and all(len(r.messages) > 2 for r in multi)
    lens = collections.Counter(len(r.messages) for r in multi)
    assert lens == {4: 16, 6: 10, 8: 3, 20: 1}  # the 5-string row loses its trailing user turn


def test_alpaca_style_prompts(pool):
    seed = pool["self_instruct_seed"]
    with_input = [r for r in seed if "\n\n" in r.messages[0]["content"]]
    assert with_input  # instruction + "\n\n" + input
    tool = pool["gpteacher"][-1]
    assert tool.source == "gpteacher/toolformer" and tool.id == "gpteacher/toolformer:7672"


def test_hh_rlhf_turns(pool):
    for r in pool["hh_rlhf"]:
        roles = [m["role"] for m in r.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2)  # consecutive turns merged
        assert all(m["content"] and m["content"] == m["content"].strip() for m in r.messages)
    # line 764 has two Assistant turns in a row upstream: merged into one
    r = next(r for r in pool["hh_rlhf"] if r.id == "hh_rlhf:764")
    assert [m["role"] for m in r.messages] == ["user", "assistant", "user", "assistant"]


def test_default_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv(S.ENV_DATA_ROOT, str(tmp_path))
    assert S.default_data_root() == tmp_path
    monkeypatch.setenv(S.ENV_DATA_ROOT, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="LESS_RAY_DATA_ROOT"):
        S.default_data_root()


def test_native_row_functions_are_registered_and_name_bad_fields():
    from less_ray.data.schema import RecordError
    assert set(S.CANDIDATE_SOURCES) <= set(S.NATIVE_FORMATS)
    assert S.NATIVE_FORMATS["gpteacher"].messages is S.gpteacher_messages
    with pytest.raises(RecordError, match=r"^field 'instances' must hold exactly one instance, got 0$"):
        S.self_instruct_seed_messages({"instruction": "i", "instances": []})
    with pytest.raises(RecordError, match=r"^missing field 'question'$"):
        S.gsm8k_messages({"answer": "x\n#### 1"})
    with pytest.raises(RecordError, match=r"^field 'chosen': text before the first"):
        S.hh_rlhf_messages({"chosen": "hello\n\nHuman: hi\n\nAssistant: yo"})
    with pytest.raises(RecordError, match=r"^expected 3 tab-separated fields \(question, answer, rationale\), got 2$"):
        S.flan_v2_cot_messages(["q", "a"])
    assert S.flan_v2_cot_messages(["Q\\nx", "B", "R"])[1]["content"] == "R So the answer is B."
