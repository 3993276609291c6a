"""chat_format less against LESS's code (princeton-nlp/LESS, less/data_selection/):
token ids and label masks for single-turn, multi-turn, system, truncated, prompt/completion and
target records, with the tiny tokenizer and SmolLM2's; the selection count rule.

Two kinds of expectation, both independent of less_ray.core.formatting:
- hand-written texts and label runs from LESS's documented behaviour (its docstrings and the
  issue's table): each assistant turn ends eos + "\\n", that "\\n" labelled; prompt/completion
  is `prompt + " " + completion + eos`; a target's cue is not labelled and has no eos;
- `less_*` below: LESS's three encoders re-written here step by step (tokenise the whole text
  truncated at max_seq_length, then mask token ranges whose ends are the lengths of tokenised
  text prefixes), run on the same tokenizer.
"""
from __future__ import annotations

import csv
import gzip
import json
import math

import pytest

from less_ray.core.formatting import (IGNORE_INDEX, FormatConfig, SkippedExample, TokenizedExample, render_less,
                                      tokenize_messages)
from less_ray.data.schema import RecordError, make_record, prompt_completion, record_from_dict, validation

MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
         {"role": "assistant", "content": "2 + 3 = 5. So the answer is 5."},
         {"role": "user", "content": "  And 4 + 4?  "}, {"role": "assistant", "content": " 4 + 4 = 8.\n"}]
SINGLE = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]


# --- LESS's encoders, re-written for the test ---------------------------------------------------
def _ids(tok, text, max_len):
    return tok(text, max_length=max_len, truncation=True)["input_ids"]


def less_concat(messages, eos):
    out = ""
    for m in messages:
        tail = eos if m["role"] == "assistant" else ""
        out += "<|" + m["role"] + "|>\n" + m["content"].strip() + tail + "\n"
    return out


def less_messages(messages, tok, max_len):
    """encode_with_messages_format: labels = ids, then each non-assistant message (and the
    assistant tag after it) set to -100, by tokenised-prefix lengths."""
    ids = _ids(tok, less_concat(messages, tok.eos_token), max_len)
    labels = list(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else len(_ids(tok, less_concat(messages[:i], tok.eos_token), max_len))
        upto = less_concat(messages[:i + 1], tok.eos_token)
        if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant":
            upto += "<|assistant|>\n"
        end = len(_ids(tok, upto, max_len))
        for j in range(start, min(end, len(labels))):
            labels[j] = IGNORE_INDEX
        if end >= max_len:
            break
    return ids, labels


def less_prompt_completion(prompt, completion, tok, max_len):
    """encode_with_prompt_completion_format."""
    space = not prompt.endswith((" ", "\n", "\t")) and not completion.startswith((" ", "\n", "\t"))
    ids = _ids(tok, prompt + (" " if space else "") + completion + tok.eos_token, max_len)
    n = len(_ids(tok, prompt, max_len))
    return ids, [IGNORE_INDEX] * min(n, len(ids)) + ids[n:]


def less_validation(query, completion, tok, max_len):
    """get_validation_dataset.tokenize: `encode(query)` and `encode(query + completion)`; max_length
    alone truncates (transformers' default strategy when only max_length is given)."""
    full = tok.encode(query + completion, max_length=max_len)
    n = len(tok.encode(query, max_length=max_len))
    return full, [IGNORE_INDEX] * min(n, len(full)) + full[n:]


# --- helpers ------------------------------------------------------------------------------------
def runs(ex: TokenizedExample, tok) -> list[str]:
    """Decoded maximal runs of labelled tokens."""
    out, cur = [], []
    for t, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return [tok.decode(r) for r in out + ([cur] if cur else [])]


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    from less_ray.models import load_tokenizer
    return load_tokenizer(smollm2_dir)


@pytest.fixture(params=["tiny", "smollm2"])
def tok(request):
    return request.getfixturevalue("tiny_tokenizer" if request.param == "tiny" else "smollm2_tokenizer")


LESS = FormatConfig("less")


# --- chat records ---------------------------------------------------------------------------------
def test_default_is_less_and_text_is_not_stripped():
    assert FormatConfig().chat_format == "less"
    text, masked = render_less(MULTI, "</s>")
    assert text == ("<|system|>\nBe brief.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
                    "2 + 3 = 5. So the answer is 5.</s>\n<|user|>\nAnd 4 + 4?\n<|assistant|>\n4 + 4 = 8.</s>\n")
    # masked: the system message; the user message + the assistant tag after it (twice)
    assert [text[a:b] for a, b in masked] == [
        "<|system|>\nBe brief.\n", "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n",
        "<|user|>\nAnd 4 + 4?\n<|assistant|>\n"]


def test_single_turn(tok):
    ex = tokenize_messages(SINGLE, tok, LESS, "s")
    text = "<|user|>\nWhat is 2 + 3?\n<|assistant|>\n5" + tok.eos_token + "\n"
    assert ex.input_ids == tok(text)["input_ids"] and not ex.truncated
    assert runs(ex, tok) == ["5" + tok.eos_token + "\n"]  # the newline after eos is trained on
    n = ex.n_label_tokens
    assert ex.labels[-n:] == ex.input_ids[-n:] and set(ex.labels[:-n]) == {IGNORE_INDEX}
    assert (ex.input_ids, ex.labels) == less_messages(SINGLE, tok, 2048)


def test_single_turn_smollm2_ids(smollm2_tokenizer):
    """SmolLM2 (no BOS added): the answer's tokens end with eos <|im_end|> = 2 and "\\n" = 198, labelled."""
    tok = smollm2_tokenizer
    ex = tokenize_messages(SINGLE, tok, LESS)
    assert ex.input_ids[:6] == tok("<|user|>\n", add_special_tokens=False)["input_ids"]
    assert ex.input_ids[-3] == tok("5", add_special_tokens=False)["input_ids"][0]
    assert ex.input_ids[-2:] == [2, 198] and ex.labels[-3:] == ex.input_ids[-3:]
    assert ex.labels[-4] == IGNORE_INDEX


def test_multi_turn_with_system(tok):
    ex = tokenize_messages(MULTI, tok, LESS)
    eos = tok.eos_token
    assert runs(ex, tok) == [f"2 + 3 = 5. So the answer is 5.{eos}\n", f"4 + 4 = 8.{eos}\n"]
    rest = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX], skip_special_tokens=True)
    assert rest == ("<|system|>\nBe brief.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
                    "<|user|>\nAnd 4 + 4?\n<|assistant|>\n")
    assert (ex.input_ids, ex.labels) == less_messages(MULTI, tok, 2048)
    if tok.bos_token_id is not None and ex.input_ids[0] == tok.bos_token_id:  # the tiny Llama adds BOS
        assert ex.labels[0] == IGNORE_INDEX


def test_truncation(tok):
    full = tokenize_messages(MULTI, tok, LESS)
    first = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
    # cut inside the first answer: the kept part keeps its labels, as LESS (truncation=True)
    part = tokenize_messages(MULTI, tok, FormatConfig("less", first + 2))
    assert part.truncated and part.input_ids == full.input_ids[:first + 2]
    assert part.labels == full.labels[:first + 2] and part.n_label_tokens == 2
    assert (part.input_ids, part.labels) == less_messages(MULTI, tok, first + 2)
    # cut inside the second user turn: the first answer whole, nothing after it labelled
    second_user = max(i for i, x in enumerate(full.labels[:-1]) if x != IGNORE_INDEX and full.labels[i + 1] == IGNORE_INDEX)
    cut = second_user + 4
    mid = tokenize_messages(MULTI, tok, FormatConfig("less", cut))
    assert runs(mid, tok) == [f"2 + 3 = 5. So the answer is 5.{tok.eos_token}\n"]
    assert (mid.input_ids, mid.labels) == less_messages(MULTI, tok, cut)
    # cut before any answer token: LESS keeps an all -100 row (loss 0/0 = NaN); we skip and say why
    gone = tokenize_messages(MULTI, tok, FormatConfig("less", first), example_id="x")
    assert isinstance(gone, SkippedExample) and gone.id == "x" and "truncated away" in gone.reason
    ids, labels = less_messages(MULTI, tok, first)
    assert len(ids) == first and set(labels) == {IGNORE_INDEX}


def test_demo_pool_equals_less(tiny_tokenizer):
    from less_ray.data.demo import generate_pool
    pool = generate_pool(300, seed=3)
    assert any(len(r.messages) > 3 for r in pool) and any(r.messages[0]["role"] == "system" for r in pool)
    for max_len in (2048, 24):
        for r in pool:
            ours = tokenize_messages(r.messages, tiny_tokenizer, FormatConfig("less", max_len))
            ids, labels = less_messages(r.messages, tiny_tokenizer, max_len)
            if set(labels) == {IGNORE_INDEX}:
                assert isinstance(ours, SkippedExample), r.id
            else:
                assert (ours.input_ids, ours.labels) == (ids, labels), r.id


# --- prompt/completion ---------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, completion, text", [
    ("Translate: cat", "chat", "Translate: cat chat"),  # a space is put between
    ("Translate: cat\n", "chat", "Translate: cat\nchat"),  # not when the prompt ends with whitespace
    ("Translate: cat", " chat", "Translate: cat chat"),  # nor when the completion starts with it
    ("  Padded prompt  ", "kept as is ", "  Padded prompt  kept as is "),  # never stripped
])
def test_prompt_completion(tok, prompt, completion, text):
    msgs = prompt_completion(prompt, completion)
    ex = tokenize_messages(msgs, tok, LESS)
    assert ex.input_ids == tok(text + tok.eos_token)["input_ids"]
    assert (ex.input_ids, ex.labels) == less_prompt_completion(prompt, completion, tok, 2048)
    # LESS's rule: the first len(tokenise(prompt)) tokens are not labelled, every later one is
    n = len(tok(prompt)["input_ids"])
    assert set(ex.labels[:n]) == {IGNORE_INDEX} and ex.labels[n:] == ex.input_ids[n:]
    labelled = tok.decode(ex.input_ids[n:])
    if not prompt.endswith(" "):
        assert labelled.strip() == completion.strip() + tok.eos_token
    else:
        # the prompt's trailing spaces tokenise alone differently than before "kept": LESS's prefix
        # count may then also mask the completion's first token(s) (the tiny tokenizer: "k"); kept
        assert (completion + tok.eos_token).endswith(labelled.strip())
    # a system message is not part of LESS's prompt/completion text
    assert tokenize_messages(prompt_completion(prompt, completion, system="Be nice."), tok, LESS) == ex


def test_prompt_completion_smollm2_ids(smollm2_tokenizer):
    ex = tokenize_messages(prompt_completion("Translate: cat", "chat"), smollm2_tokenizer, LESS)
    # "Translate", ":", " cat" | " chat", <|im_end|>
    assert ex.input_ids == [8241, 12837, 42, 2644, 11743, 2]
    assert ex.labels == [IGNORE_INDEX] * 4 + [11743, 2]


def test_prompt_completion_file_is_read_as_such(tmp_path, tiny_tokenizer):
    from less_ray.data.io import read_records, write_parquet
    path = tmp_path / "pc.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "Translate: cat", "completion": "chat"}) + "\n")
    rec = read_records(path, format="prompt_completion").records[0]
    assert rec.messages[-1]["encoding"] == "prompt_completion"
    ex = tokenize_messages(rec.messages, tiny_tokenizer, LESS)
    assert (ex.input_ids, ex.labels) == less_prompt_completion("Translate: cat", "chat", tiny_tokenizer, 2048)
    # the chat renderings still see a user turn and an assistant turn
    old = tokenize_messages(rec.messages, tiny_tokenizer, FormatConfig("tulu_stripped"))
    assert runs(old, tiny_tokenizer) == ["chat" + tiny_tokenizer.eos_token]
    # the encoding survives JSONL and Parquet
    write_parquet([rec], tmp_path / "pc.parquet")
    assert read_records(tmp_path / "pc.parquet").records == [rec]
    assert record_from_dict(rec.to_dict()) == rec


# --- targets --------------------------------------------------------------------------------------
def test_validation_record(tok):
    msgs = validation("Q: What is 2 + 2?", "A:", " 4")
    ex = tokenize_messages(msgs, tok, LESS)
    query = "<|user|>\nQ: What is 2 + 2?\n<|assistant|>\nA:"
    assert ex.input_ids == tok(query + " 4")["input_ids"]  # no eos, no final newline
    assert runs(ex, tok) == [" 4"]  # the cue "A:" is not labelled
    assert (ex.input_ids, ex.labels) == less_validation(query, " 4", tok, 2048)


def test_real_targets_equal_less_validation_dataset(root, smollm2_tokenizer):
    """Every BBH, MMLU and TydiQA target, tokenised by us, equals LESS's get_validation_dataset
    procedure run here on the raw files (queries built below, not by less_ray.data.targets)."""
    from less_ray.data.targets import TYDIQA_TEMPLATES, build_targets
    tok = smollm2_tokenizer
    expected = {}
    for path in sorted((root / "bbh/cot-prompts").glob("*.txt")):
        with open(path, encoding="utf-8") as f:
            shots = "".join(f.readlines()[2:])
        parts = shots.split("\n\n")
        exes, task_prompt = parts[-3:], "\n\n".join(parts[:-3])
        for i, target in enumerate(exes):
            icl = "".join(q + "\nA:" + a + "\n\n" for q, a in (e.split("\nA:") for e in exes[:i] + exes[i + 1:]))
            question, answer = target.split("\nA:")
            expected[f"bbh/{path.stem}:{i}"] = ("<|user|>\n" + task_prompt.strip() + "\n\n" + icl + question +
                                                "\n<|assistant|>\nA:", answer)
    for path in sorted((root / "mmlu/dev").glob("*_dev.csv")):
        subject = path.name[:-len("_dev.csv")]
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))[1:6]  # this copy: a header row, answers 0-3
        for i, (q, a, b, c, d, ans) in enumerate(rows):
            prompt = ("The following are multiple choice questions (with answers) about "
                      + "".join(" " + w for w in subject.split("_")) + ".\n\n"
                      + q + f"\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:")
            expected[f"mmlu/{subject}:{i}"] = ("<|user|>\n" + prompt + "\n<|assistant|>\nThe answer is:",
                                               " " + "ABCD"[int(ans)])
    targets = {r.id: r for name in ("bbh", "mmlu", "tydiqa") for r in build_targets(name, root)}
    for r in (r for r in targets.values() if r.task == "tydiqa"):
        lang = r.subtask
        d = root / "tydiqa/language_data" / lang
        train = d / f"{lang}_tydiqa_train.json.gz"
        data = json.loads(gzip.decompress(train.read_bytes()) if train.exists()
                          else (d / f"{lang}_tydiqa_dev.json").read_text(encoding="utf-8"))
        para, qa = next((p, qa) for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]
                        if qa["id"] == r.id)
        instr, p_t, q_t, a_t = TYDIQA_TEMPLATES[lang]
        prompt = instr + p_t + " " + para["context"] + "\n" + q_t + " " + qa["question"] + "\n"
        expected[r.id] = ("<|user|>\n" + prompt + "<|assistant|>\n" + a_t, " " + qa["answers"][0]["text"])
    assert set(expected) == set(targets) and len(expected) == 81 + 285 + 9
    for rid, (query, completion) in expected.items():
        ex = tokenize_messages(targets[rid].messages, tok, LESS, rid)
        assert (ex.input_ids, ex.labels) == less_validation(query, completion, tok, 2048), rid
        if not ex.truncated:  # a few long BBH targets pass 2048 SmolLM2 tokens: cut, as LESS cuts them
            assert tok.decode(ex.input_ids) == query + completion, rid


# --- schema --------------------------------------------------------------------------------------
@pytest.mark.parametrize("messages, match", [
    ([{"role": "user", "content": "q", "encoding": "validation"}, {"role": "assistant", "content": "a"}],
     r"messages\[0\]\.encoding: only the last"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "encoding": "raw"}],
     r"messages\[1\]\.encoding must be one of prompt_completion, validation, got 'raw'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "cue": "A:"}],
     r"messages\[1\]\.cue is only valid with encoding 'validation'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "cue": 3, "encoding": "validation"}],
     r"messages\[1\]\.cue must be a string, got int"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q"},
      {"role": "assistant", "content": "a", "encoding": "prompt_completion"}],
     r"encoding 'prompt_completion' needs \[system,\] user, assistant messages"),
])
def test_schema_rejects_bad_encodings(messages, match):
    with pytest.raises(RecordError, match=match):
        record_from_dict({"source": "s", "messages": messages})


def test_parquet_nulls_are_plain_messages():
    """A Parquet row of an ordinary message has encoding/cue null: it is a plain chat turn, same id."""
    plain = make_record("s", SINGLE)
    nulls = record_from_dict({"source": "s", "messages": [{**m, "encoding": None, "cue": None} for m in SINGLE]})
    assert nulls == plain and nulls.id == plain.id
    # the encoding is part of the content id: a prompt/completion line is not the same record as a chat
    assert make_record("s", prompt_completion("q", "a")).id != make_record(
        "s", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]).id


# --- the selection count --------------------------------------------------------------------------
def test_count_rule():
    from less_ray.selection.select import selection_count
    # ours: floor(p·N + 1e-9) over every record of the pool file, for every selector
    assert selection_count(0.05, None, 1200, 1160) == 60  # LESS's scored rows (1160) do not shrink it
    assert selection_count(0.05, None, 1200) == 60  # random/RDS score all 1200: the same k
    assert selection_count(0.29, None, 100) == 29
    # LESS's write_selected_data: int(p·N), float rounding included (0.29·100 = 28.999999999999996)
    assert selection_count(0.29, None, 100, rule="less") == 28 == int(0.29 * 100)
    assert selection_count(0.05, None, 1200, 1160, rule="less") == 60
    for p in (0.01, 0.05, 0.07, 0.1, 0.29, 0.57):
        for n in (1, 99, 100, 1000, 270679):
            assert selection_count(p, None, n, rule="less") == int(p * n)
            assert selection_count(p, None, n) == math.floor(p * n + 1e-9)
    assert selection_count(None, 7, 100, 5) == 5  # top_n, never more than scored
    assert selection_count(1.0, None, 100, 96) == 96
    with pytest.raises(ValueError, match="count_rule must be one of floor, less"):
        selection_count(0.05, None, 100, rule="round")
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        selection_count(0.0, None, 100)


def _score_folder(out, pool_path, ids, scores):
    from less_ray.selection.folder import ScoreFolderWriter
    w = ScoreFolderWriter(out, ["t"], pool=str(pool_path))
    w.write("t", ids, ["s"] * len(ids), scores)
    w.close({"selector": "test"})


@pytest.mark.parametrize("rule, k", [("floor", 29), ("less", 28)])
def test_one_denominator_for_every_selector(tmp_path, rule, k):
    """A LESS score folder lacks its 4 skipped examples, a random one scores all 100: both select
    k of the pool file's N = 100 records, and selection.json records the rule."""
    from less_ray.data.io import write_jsonl
    from less_ray.selection.select import SelectConfig, run_select
    pool = [make_record("s", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                        id=f"r{i:03d}") for i in range(100)]
    write_jsonl(pool, tmp_path / "pool.jsonl")
    ids = [r.id for r in pool]
    _score_folder(tmp_path / "less", tmp_path / "pool.jsonl", ids[4:], [float(i) for i in range(96)])
    _score_folder(tmp_path / "random", tmp_path / "pool.jsonl", ids, [float(i) for i in range(100)])
    for name in ("less", "random"):
        res = run_select(SelectConfig(scores=str(tmp_path / name), top_p=0.29, count_rule=rule, sorted_csv=False))
        lines = (tmp_path / name / "t" / "top_p0.29.jsonl").read_text().splitlines()
        assert len(lines) == k == res["t"]["selected"]
        rec = json.loads((tmp_path / name / "t" / "selection.json").read_text())["rule"]
        assert (rec["rule"], rec["p"], rec["N"], rec["k"]) == (rule, 0.29, 100, k)
        assert rec["scored"] == (96 if name == "less" else 100)
        assert [json.loads(x)["id"] for x in lines] == [f"r{i:03d}" for i in range(99, 99 - k, -1)]


def test_select_writes_the_manifest_that_train_report_and_demo_read(tmp_path):
    """select's `selection.json` names the file, k, the rule and the config; readers take the
    selection from it (never re-deriving k or the file name) and refuse a file changed since."""
    from less_ray.data.io import write_jsonl
    from less_ray.selection.report.collect import selection_spec
    from less_ray.selection.select import SelectConfig, read_selection_manifest, run_select
    pool = [make_record("s", [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}],
                        id=f"r{i:03d}") for i in range(50)]
    write_jsonl(pool, tmp_path / "pool.jsonl")
    _score_folder(tmp_path / "f", tmp_path / "pool.jsonl", [r.id for r in pool], [float(i) for i in range(50)])
    run_select(SelectConfig(scores=str(tmp_path / "f"), top_n=7, top_p=None, sorted_csv=False))
    man = read_selection_manifest(tmp_path / "f" / "t")
    assert man["k"] == 7 and man["path"] == str(tmp_path / "f" / "t" / "top_n7.jsonl")
    assert man["config"]["top_n"] == 7 and man["rule"]["rule"] == "top_n"
    spec = selection_spec(tmp_path / "f" / "t", 50, None)
    assert (spec["k_rule"], spec["file"]) == (7, tmp_path / "f" / "t" / "top_n7.jsonl")
    # no selection of the size asked: k as select would count it, p of the pool's N (not of the
    # rows scored: 40 here, as if 10 records had been skipped), at most the rows scored
    other = selection_spec(tmp_path / "f" / "t", 40, 0.1, n_pool=lambda: 50)
    assert (other["k_rule"], other["file"]) == (5, None)
    assert selection_spec(tmp_path / "f" / "t", 3, 0.1, n_pool=lambda: 50)["k_rule"] == 3
    with open(man["path"], "a") as fh:
        fh.write("{}\n")
    with pytest.raises(ValueError, match="changed since select wrote it"):
        read_selection_manifest(tmp_path / "f" / "t")
    with pytest.raises(FileNotFoundError, match="no selection here"):
        read_selection_manifest(tmp_path / "f" / "nothing")
