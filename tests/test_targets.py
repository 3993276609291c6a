"""LESS target sets (BBH 81, TydiQA 9, MMLU 285) built from the real files in shared/data, and
their exact texts as LESS's get_validation_dataset.py writes them (hand-written below)."""
from __future__ import annotations

import csv
import gzip
import json

import pytest

from less_ray.data import targets as T
from less_ray.data.schema import DataFileError, record_from_dict


@pytest.fixture(scope="module")
def targets(root):
    return {name: T.build_targets(name, root) for name in T.TARGET_BUILDERS}


@pytest.mark.parametrize("name,n,n_sub,per_sub", [("bbh", 81, 27, 3), ("tydiqa", 9, 9, 1), ("mmlu", 285, 57, 5)])
def test_counts_and_grouping(targets, name, n, n_sub, per_sub):
    recs = targets[name]
    assert len(recs) == n and len({r.id for r in recs}) == n
    assert {r.task for r in recs} == {name}
    order = [r.subtask for r in recs]
    runs = [s for i, s in enumerate(order) if i == 0 or s != order[i - 1]]
    assert runs == sorted(set(order)) and len(runs) == n_sub  # grouped, never returns to a subtask
    assert all(order.count(s) == per_sub for s in runs)
    for r in recs:
        assert record_from_dict(r.to_dict()) == r and r.source == name
        assert [m["role"] for m in r.messages] == ["user", "assistant"]
        assert r.messages[1]["encoding"] == "validation"


def less_text(r):
    """LESS's query + completion, and the completion (the only labelled text)."""
    user, a = r.messages
    return "<|user|>\n" + user["content"] + "\n<|assistant|>\n" + a["cue"] + a["content"], a["content"]


SPORTS = ('Determine whether an artificially constructed sentence relating to sports is plausible or not.\n\n'
          'Q: Is the following sentence plausible? "Bam Adebayo scored a reverse layup in the Western Conference Finals."\n'
          "A: Let's think step by step. Bam Adebayo is an American basketball player. Scoring a reverse layup in the "
          "Western Conference Finals is part of the NBA Finals. So the answer is yes.\n\n"
          'Q: Is the following sentence plausible? "Santi Cazorla scored a touchdown."\n'
          "A: Let's think step by step. Santi Cazorla is a soccer player. Touchdown is part of American football and "
          "rugby. So the answer is no.\n\n")


def test_bbh_exact_text_one_task(targets):
    """sports_understanding's third exemplar as LESS's target: the other two as demos (each followed by a
    blank line), its question, then the assistant turn opening with the unlabelled cue "A:"; the completion
    keeps its leading space and has no eos."""
    r = next(r for r in targets["bbh"] if r.id == "bbh/sports_understanding:2")
    text, completion = less_text(r)
    assert text == ("<|user|>\n" + SPORTS +
                    'Q: Is the following sentence plausible? "DeMar DeRozan was called for the goal tend."'
                    "\n<|assistant|>\nA: Let's think step by step. DeMar DeRozan is an American basketball player. "
                    "Goal tending is part of basketball. So the answer is yes.")
    assert completion == (" Let's think step by step. DeMar DeRozan is an American basketball player. "
                          "Goal tending is part of basketball. So the answer is yes.")


def test_bbh_prompts(targets, root):
    recs = targets["bbh"]
    assert {r.subtask for r in recs} == {p.stem for p in (root / "bbh/cot-prompts").glob("*.txt")}
    for task in {r.subtask for r in recs}:
        group = [r for r in recs if r.subtask == task]
        assert [r.id for r in group] == [f"bbh/{task}:{k}" for k in range(3)]
        questions = [r.messages[0]["content"].rsplit("\n\n", 1)[1] for r in group]  # "Q: ..."
        for k, r in enumerate(group):
            user, answer = r.messages[0]["content"], r.messages[1]["content"]
            assert answer.startswith(" Let's think step by step.") and "So the answer is" in answer
            assert r.messages[1]["cue"] == "A:" and user.count("Q: ") == 3 and "\nA:" not in user.rsplit("\n\n", 1)[1]
            assert answer not in user  # its own answer is never in the prompt
            for j in range(3):
                if j != k:  # the two other exemplars, question and answer, are in the prompt
                    assert questions[j] + "\nA:" + group[j].messages[1]["content"] + "\n\n" in user
            assert "canary" not in user and "-----" not in user
    # snarks' task prompt has two paragraphs: LESS keeps everything before the last 3 blank-line parts
    snarks = next(r for r in recs if r.subtask == "snarks")
    assert snarks.messages[0]["content"].startswith("Determine which of two sentences is sarcastic.\n\nAccording to")


def test_mmlu_exact_text_one_subject(targets, root):
    """abstract_algebra's 5 dev rows: LESS's header with two spaces after "about" (format_subject), the
    question, lettered choices, "Answer:", then the assistant cue "The answer is:" and " {letter}"."""
    with open(root / "mmlu/dev/abstract_algebra_dev.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][0].startswith("Find all c in Z_3") and rows[1][5] == "1"
    recs = [r for r in targets["mmlu"] if r.subtask == "abstract_algebra"]
    assert [r.id for r in recs] == [f"mmlu/abstract_algebra:{i}" for i in range(5)]
    text, completion = less_text(recs[0])
    assert text == ("<|user|>\nThe following are multiple choice questions (with answers) about  abstract algebra.\n\n"
                    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer:"
                    "\n<|assistant|>\nThe answer is: B")
    assert completion == " B"
    text, completion = less_text(recs[1])
    assert text == ("<|user|>\nThe following are multiple choice questions (with answers) about  abstract algebra.\n\n"
                    "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K "
                    "are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\n"
                    "D. False, True\nAnswer:\n<|assistant|>\nThe answer is: B")
    for r, row in zip(recs, rows[1:6]):  # each row's answer index as the letter, after a space
        assert r.messages[1]["content"] == " " + "ABCD"[int(row[5])]
    assert {r.messages[1]["content"] for r in targets["mmlu"]} == {" A", " B", " C", " D"}


def test_mmlu_bad_row_raises(tmp_path):
    d = tmp_path / "mmlu" / "dev"
    d.mkdir(parents=True)
    (d / "x_dev.csv").write_text("question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,1\nq,a,b,c,d,E\n")
    with pytest.raises(DataFileError, match=r"x_dev.csv:3: answer must be 0-3"):
        T.build_mmlu(tmp_path)


def test_tydiqa(targets, root):
    recs = targets["tydiqa"]
    assert [r.subtask for r in recs] == sorted(T.TYDIQA_TEMPLATES)
    for r in recs:
        instr, p, q, a = T.TYDIQA_TEMPLATES[r.subtask]
        user = r.messages[0]["content"]
        assert r.id.split("-")[0] == r.subtask
        assert user.startswith(f"{instr}{p} ") and f"\n{q} " in user and r.messages[1]["cue"] == a
        split = "train" if r.subtask in ("english", "korean", "swahili") else "dev"  # train where this copy has it
        found = (T.tydiqa_train_questions(root, r.subtask) if split == "train" else
                 T.tydiqa_dev_questions(root, r.subtask))
        gold = next(x for x in found if x["id"] == r.id)
        assert r.messages[1]["content"] == " " + gold["answers"][0] and len(gold["context"]) <= 2000
    # deterministic for a seed, different for another
    assert [r.id for r in T.build_tydiqa(root)] == [r.id for r in recs]
    assert [r.id for r in T.build_tydiqa(root, seed=1)] != [r.id for r in recs]


def test_tydiqa_exact_text_english(targets, root):
    """English: drawn from GoldP train (as LESS); the instruction runs straight into "Passage:" (LESS's
    concatenation has no separator), question line, then the assistant cue "Answer:" and " {answer}"."""
    r = next(r for r in targets["tydiqa"] if r.subtask == "english")
    raw = json.loads(gzip.decompress((root / "tydiqa/language_data/english/english_tydiqa_train.json.gz").read_bytes()))
    para, qa = next((para, qa) for art in raw["data"] for para in art["paragraphs"] for qa in para["qas"]
                    if qa["id"] == r.id)
    text, completion = less_text(r)
    assert text == ("<|user|>\nAnswer the following question based on the information in the given passage."
                    "Passage: " + para["context"] + "\nQuestion: " + qa["question"] +
                    "\n<|assistant|>\nAnswer: " + qa["answers"][0]["text"])
    assert completion == " " + qa["answers"][0]["text"]


@pytest.mark.parametrize("seed", [0, 1])
def test_tydiqa_eval_split_excludes_targets(root, seed):
    target_ids = {r.id for r in T.build_tydiqa(root, seed=seed)}
    full = T.tydiqa_eval_split(root, seed=seed, max_per_language=None)
    # the 6 languages without a train file draw their target from dev: those 6 are held out
    assert len(full) == 5077 - 6 and not target_ids & {q["id"] for q in full}
    capped = T.tydiqa_eval_split(root, seed=seed)
    assert len(capped) == 8 * 200 + 112  # bengali (dev-drawn) keeps 112 of its 113
    assert not target_ids & {q["id"] for q in capped}
    assert set(capped[0]) == {"id", "language", "context", "question", "answers"}


def test_unknown_target_set(root):
    with pytest.raises(KeyError):
        T.build_targets("nope", root)
