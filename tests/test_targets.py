"""LESS target sets (BBH 81, TydiQA 9, MMLU 285) built from the real files in shared/data."""
from __future__ import annotations

import csv

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


def test_bbh_prompts(targets, root):
    recs = targets["bbh"]
    assert {r.subtask for r in recs} == {p.stem for p in (root / "bbh/cot-prompts").glob("*.txt")}
    for task in {r.subtask for r in recs}:
        group = [r for r in recs if r.subtask == task]
        assert [r.id for r in group] == [f"bbh/{task}:{k}" for k in range(3)]
        questions = [r.messages[0]["content"].rsplit("\n\n", 1)[1] for r in group]  # "Q: ...\nA:"
        for k, r in enumerate(group):
            user, answer = r.messages[0]["content"], r.messages[1]["content"]
            assert answer.startswith("Let's think step by step.") and "So the answer is" in answer
            assert user.endswith("\nA:") and user.count("Q: ") == 3
            assert answer not in user  # its own answer is never in the prompt
            for j in range(3):
                if j != k:  # the two other exemplars, question and answer, are in the prompt
                    assert questions[j].removesuffix("\nA:") in user
                    assert group[j].messages[1]["content"] in user
            assert "canary" not in user and "-----" not in user
    snarks = next(r for r in recs if r.subtask == "snarks")
    assert snarks.messages[0]["content"].startswith("Determine which of two sentences is sarcastic.\n\nAccording to")


def test_mmlu_known_row(targets, root):
    with open(root / "mmlu/dev/abstract_algebra_dev.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][0].startswith("Find all c in Z_3") and rows[1][5] == "1"
    r = next(r for r in targets["mmlu"] if r.id == "mmlu/abstract_algebra:0")
    assert r.messages[1]["content"] == "B"
    assert r.messages[0]["content"] == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        f"{rows[1][0]}\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer:")
    assert {r.messages[1]["content"] for r in targets["mmlu"]} == set("ABCD")


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
        assert user.startswith(f"{instr}\n\n{p} ") and f"\n{q} " in user and user.endswith(f"\n{a}")
        gold = next(x for x in T.tydiqa_dev_questions(root, r.subtask) if x["id"] == r.id)
        assert len(gold["context"]) <= 2000 and r.messages[1]["content"] == gold["answers"][0]
    # deterministic for a seed, different for another
    assert [r.id for r in T.build_tydiqa(root)] == [r.id for r in recs]
    assert [r.id for r in T.build_tydiqa(root, seed=1)] != [r.id for r in recs]


@pytest.mark.parametrize("seed", [0, 1])
def test_tydiqa_eval_split_excludes_targets(root, seed):
    target_ids = {r.id for r in T.build_tydiqa(root, seed=seed)}
    full = T.tydiqa_eval_split(root, seed=seed, max_per_language=None)
    assert len(full) == 5077 - 9 and not target_ids & {q["id"] for q in full}
    capped = T.tydiqa_eval_split(root, seed=seed)
    assert len(capped) == 8 * 200 + 112  # bengali has only 113 dev questions
    assert not target_ids & {q["id"] for q in capped}
    assert set(capped[0]) == {"id", "language", "context", "question", "answers"}


def test_unknown_target_set(root):
    with pytest.raises(KeyError):
        T.build_targets("nope", root)
