"""Evaluation prompts as LESS's evaluation scripts build them (open-instruct's BBH / MMLU / TydiQA).

- BBH: the task's 3-shot CoT text (`"".join(lines[2:])` of the cot-prompts file, stripped),
  then `\n\nQ: {input}`; cue "A:"; the answer is extracted after "So the answer is".
- MMLU: "The following are multiple choice questions (with answers) about  {subject}.\n\n"
  (LESS's format_subject: two spaces), 5 dev rows with answers, then the test question ending
  "\nAnswer:"; the answer is the letter whose next-token logit is highest; chat cue "The answer is:".
- TydiQA GoldP: "{instruction}\n\n{demo}\n\n{Passage: ..}\n{Question: ..}\n" with the language's
  target example as the 1-shot demo ("{Passage:} {context}\n{Question:} {question}\n{Answer:}
  {answer}"); cue "Answer:". (The *target* text joins instruction and passage with no
  separator; the evaluation text has "\n\n": both as LESS.)
`prompt` is the user text verbatim; `less_text()` gives the exact string LESS's shipped scripts
feed the model: tulu chat (`<|user|>\n{prompt}\n<|assistant|>\n{cue}`) for TydiQA, plain text
for BBH (`{prompt}\nA:`) and MMLU (`{prompt}`), as `evaluation/eval_*.sh` run them.
Evaluation examples never include a target example.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..data.targets import (TYDIQA_LANGUAGES, TYDIQA_TEMPLATES, _parse_cot_prompt, bbh_task_prompt,
                            mmlu_example, mmlu_head, tydiqa_eval_split, tydiqa_target_question)

LESS_CHAT_TASKS = ("tydiqa",)  # the tasks LESS's eval scripts run with --use_chat_format


@dataclass
class EvalItem:
    task: str
    subtask: str
    id: str
    prompt: str  # user text (chat) or the whole prompt (plain)
    cue: str  # text that opens the answer ("A:", "The answer is:", "Answer:")
    gold: list[str] = field(default_factory=list)

    def less_text(self) -> str:
        """The exact prompt string of LESS's eval script for this task (no BOS)."""
        if self.task in LESS_CHAT_TASKS:  # create_prompt_with_tulu_chat_format: content verbatim
            chat = "<|user|>\n" + self.prompt + "\n<|assistant|>\n"
            return chat + ("" if chat[-1] in "\n " else " ") + self.cue
        return self.prompt + ("\nA:" if self.task == "bbh" else "")


def bbh_items(data_root: Path, max_per_task: int | None = 40) -> list[EvalItem]:
    """BBH test examples, minus any that equals one of the 3 CoT exemplars (the targets)."""
    items = []
    for path in sorted((Path(data_root) / "bbh" / "cot-prompts").glob("*.txt")):
        task = path.stem
        task_prompt = bbh_task_prompt(path).strip()
        _, exemplars = _parse_cot_prompt(path)
        target_questions = {e.split("\nA:", 1)[0].removeprefix("Q:").strip() for e in exemplars}
        data = json.loads((Path(data_root) / "bbh" / "bbh" / f"{task}.json").read_text(encoding="utf-8"))
        kept = [ex for ex in data["examples"] if ex["input"].strip() not in target_questions]
        for i, ex in enumerate(kept[:max_per_task] if max_per_task else kept):
            items.append(EvalItem("bbh", task, f"bbh/{task}/test:{i}",
                                  task_prompt + "\n\nQ: " + ex["input"], "A:", [ex["target"]]))
    return items


def _mmlu_rows(path: Path) -> list[list[str]]:
    import csv
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:]  # header row (this copy has one; see mmlu/SOURCE.md)


def mmlu_items(data_root: Path, k: int = 5, max_per_subject: int | None = None) -> list[EvalItem]:
    items = []
    for dev in sorted((Path(data_root) / "mmlu" / "dev").glob("*_dev.csv")):
        subject = dev.name.removesuffix("_dev.csv")
        head = mmlu_head(subject)
        shots = "".join(mmlu_example(r, True) for r in _mmlu_rows(dev)[:k])
        test = _mmlu_rows(Path(data_root) / "mmlu" / "test" / f"{subject}_test.csv")
        for i, row in enumerate(test[:max_per_subject] if max_per_subject else test):
            items.append(EvalItem("mmlu", subject, f"mmlu/{subject}/test:{i}",
                                  head + shots + mmlu_example(row, False), "The answer is:", ["ABCD"[int(row[5])]]))
    return items


def tydiqa_items(data_root: Path, seed: int = 0, max_per_language: int | None = 200,
                 max_context_chars: int | None = 2000) -> list[EvalItem]:
    """1-shot: the demo is the language's target example (never in this split)."""
    demos = {lang: tydiqa_target_question(data_root, lang, seed, max_context_chars)[0] for lang in TYDIQA_LANGUAGES}
    items = []
    for q in tydiqa_eval_split(data_root, seed=seed, max_per_language=max_per_language,
                               max_context_chars=max_context_chars):
        lang = q["language"]
        instr, p, qcue, a = TYDIQA_TEMPLATES[lang]
        d = demos[lang]
        shot = p + " " + d["context"] + "\n" + qcue + " " + d["question"] + "\n" + a + " " + d["answers"][0]
        test = p + " " + q["context"] + "\n" + qcue + " " + q["question"] + "\n"
        items.append(EvalItem("tydiqa", lang, q["id"], instr + "\n\n" + shot + "\n\n" + test, a, q["answers"]))
    assert {i.subtask for i in items} <= set(TYDIQA_LANGUAGES)
    return items
