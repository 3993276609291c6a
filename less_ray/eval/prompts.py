"""Evaluation prompts as LESS evaluates (open-instruct's BBH / MMLU / TydiQA evaluation).

- BBH: the task's 3-shot CoT prompt, then `Q: {input}`; answer extracted after "So the answer is".
- MMLU: 5 dev examples as shots, then the test question; the answer is the letter whose
  next-token logit is highest after "The answer is:".
- TydiQA GoldP: 1 shot (the language's held-out target example), then passage and question.
In chat format the prompt is the user turn and the assistant turn starts with the cue,
as open-instruct's `use_chat_format` does. Evaluation examples never include a target example.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.targets import (TYDIQA_LANGUAGES, TYDIQA_TEMPLATES, _parse_cot_prompt, build_tydiqa,
                            tydiqa_eval_split)


@dataclass
class EvalItem:
    task: str
    subtask: str
    id: str
    prompt: str  # user text (chat) or the whole prompt (plain)
    cue: str  # text that opens the answer ("A:", "The answer is:", "Answer:")
    gold: list[str] = field(default_factory=list)


def bbh_items(data_root: Path, max_per_task: int | None = 40) -> list[EvalItem]:
    """BBH test examples, minus any that equals one of the 3 CoT exemplars (the targets)."""
    items = []
    for path in sorted((Path(data_root) / "bbh" / "cot-prompts").glob("*.txt")):
        task = path.stem
        desc, exemplars = _parse_cot_prompt(path)
        shots = "\n\n".join(exemplars)
        target_questions = {e.split("\nA:", 1)[0].removeprefix("Q:").strip() for e in exemplars}
        data = json.loads((Path(data_root) / "bbh" / "bbh" / f"{task}.json").read_text(encoding="utf-8"))
        kept = [ex for ex in data["examples"] if ex["input"].strip() not in target_questions]
        for i, ex in enumerate(kept[:max_per_task] if max_per_task else kept):
            items.append(EvalItem("bbh", task, f"bbh/{task}/test:{i}",
                                  f"{desc}\n\n{shots}\n\nQ: {ex['input']}", "A:", [ex["target"]]))
    return items


def _mmlu_rows(path: Path) -> list[list[str]]:
    import csv
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:]  # header row (this copy has one; see mmlu/SOURCE.md)


def _mmlu_example(row: list[str], with_answer: bool) -> str:
    q, *choices, ans = row
    text = q + "".join(f"\n{L}. {c}" for L, c in zip("ABCD", choices)) + "\nAnswer:"
    return text + (f" {'ABCD'[int(ans)]}\n\n" if with_answer else "")


def mmlu_items(data_root: Path, k: int = 5, max_per_subject: int | None = None) -> list[EvalItem]:
    items = []
    for dev in sorted((Path(data_root) / "mmlu" / "dev").glob("*_dev.csv")):
        subject = dev.name.removesuffix("_dev.csv")
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots = "".join(_mmlu_example(r, True) for r in _mmlu_rows(dev)[:k])
        test = _mmlu_rows(Path(data_root) / "mmlu" / "test" / f"{subject}_test.csv")
        for i, row in enumerate(test[:max_per_subject] if max_per_subject else test):
            items.append(EvalItem("mmlu", subject, f"mmlu/{subject}/test:{i}",
                                  head + shots + _mmlu_example(row, False), "The answer is:", ["ABCD"[int(row[5])]]))
    return items


def tydiqa_items(data_root: Path, seed: int = 0, max_per_language: int | None = 200,
                 max_context_chars: int = 2000) -> list[EvalItem]:
    """1-shot: the demo is the language's target example (held out of this split)."""
    demos = {r.subtask: r for r in build_tydiqa(data_root, seed=seed, max_context_chars=max_context_chars)}
    items = []
    for q in tydiqa_eval_split(data_root, seed=seed, max_per_language=max_per_language,
                               max_context_chars=max_context_chars):
        lang = q["language"]
        instr, p, qcue, a = TYDIQA_TEMPLATES[lang]
        demo = demos[lang].messages
        shot = demo[0]["content"].split("\n\n", 1)[1] + " " + demo[1]["content"]  # passage..answer cue + answer
        test = f"{p} {q['context']}\n{qcue} {q['question']}"
        items.append(EvalItem("tydiqa", lang, q["id"], f"{instr}\n\n{shot}\n\n{test}\n", a, q["answers"]))
    assert {i.subtask for i in items} <= set(TYDIQA_LANGUAGES)
    return items
