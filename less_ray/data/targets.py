"""LESS's target (validation) sets: BBH 81, TydiQA 9, MMLU 285 few-shot examples.

Built as in princeton-nlp/LESS `less/data_selection/get_validation_dataset.py`, except that
LESS's answer cue ("A:", "Answer:", ...) ends the USER turn and the assistant turn holds only
the answer, so only the answer is labelled (as in LESS). Each list is grouped by subtask
(subtasks sorted by name; file order within a subtask); every record has task and subtask.
"""
from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path
from typing import Any, Callable

from less_ray.data.schema import DataFileError, DataProblem, Record, RecordError, chat, make_record


# --- BBH: 27 tasks x 3 chain-of-thought exemplars -----------------------------------------------
def _parse_cot_prompt(path: Path) -> tuple[str, list[str]]:
    """(task description, exemplars 'Q: ...\\nA: ...') of one bbh/cot-prompts file."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if len(lines) < 3 or "canary" not in lines[0] or lines[1].strip() != "-----":
        raise DataFileError([DataProblem(str(path), 1, "expected a canary line, then '-----'")])
    body = "\n".join(lines[2:])
    # Exemplars start at a line beginning with "Q:"; the snarks description spans two
    # paragraphs, so blank lines cannot be used to find the exemplars.
    parts = re.split(r"^(?=Q:)", body, flags=re.M)
    desc, exemplars = parts[0].strip(), [p.strip() for p in parts[1:]]
    bad = [i for i, e in enumerate(exemplars) if "\nA:" not in e]
    if not desc or len(exemplars) != 3 or bad:
        raise DataFileError([DataProblem(str(path), 0, f"expected a description and 3 'Q: ...\\nA: ...' "
                                                      f"exemplars, got {len(exemplars)} (bad: {bad})")])
    return desc, exemplars


def build_bbh(data_root: Path) -> list[Record]:
    out = []
    for path in sorted((Path(data_root) / "bbh" / "cot-prompts").glob("*.txt")):
        task = path.stem
        desc, exemplars = _parse_cot_prompt(path)
        for k, ex in enumerate(exemplars):
            question, answer = ex.split("\nA:", 1)
            shots = "\n\n".join(e for j, e in enumerate(exemplars) if j != k)
            out.append(make_record("bbh", chat(f"{desc}\n\n{shots}\n\n{question}\nA:", answer.strip()),
                                   id=f"bbh/{task}:{k}", task="bbh", subtask=task))
    return out


# --- TydiQA: 1 dev question per language --------------------------------------------------------
# (instruction, passage cue, question cue, answer cue) per language, from LESS / open-instruct.
TYDIQA_TEMPLATES: dict[str, tuple[str, str, str, str]] = {
    "english": ("Answer the following question based on the information in the given passage.", "Passage:", "Question:", "Answer:"),
    "arabic": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bengali": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "finnish": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.", "Kappale:", "Kysymys:", "Vastaus:"),
    "indonesian": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.", "Bagian:", "Pertanyaan:", "Jawaban:"),
    "korean": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "russian": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:", "Ответ:"),
    "swahili": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.", "Kifungu:", "Swali:", "Jibu:"),
    "telugu": ("ఇచ్చిన పేరాలోని సమాచారం ఆధారంగా కింది ప్రశ్నకు సమాధానం ఇవ్వండి.", "పేరా:", "ప్రశ్న:", "సమాధానం:"),
}
TYDIQA_LANGUAGES = tuple(sorted(TYDIQA_TEMPLATES))


def tydiqa_dev_questions(data_root: Path, lang: str) -> list[dict[str, Any]]:
    """All dev questions of one language in file order: {id, language, context, question, answers}."""
    path = Path(data_root) / "tydiqa" / "language_data" / lang / f"{lang}_tydiqa_dev.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        return [{"id": qa["id"], "language": lang, "context": para["context"], "question": qa["question"],
                 "answers": [a["text"] for a in qa["answers"]]}
                for article in data for para in article["paragraphs"] for qa in para["qas"]]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataFileError([DataProblem(str(path), 0, f"not SQuAD-v1.1 JSON: {type(e).__name__}: {e}")]) from e


def _tydiqa_pick(questions: list[dict[str, Any]], lang: str, seed: int, max_context_chars: int) -> dict[str, Any]:
    pool = [q for q in questions if len(q["context"]) <= max_context_chars and q["answers"]]
    if not pool:
        raise ValueError(f"tydiqa {lang}: no dev question with context <= {max_context_chars} chars")
    return random.Random(f"{seed}:{lang}").choice(pool)  # str seeds are stable across processes


def build_tydiqa(data_root: Path, seed: int = 0, max_context_chars: int = 2000) -> list[Record]:
    # LESS samples from GoldP *train*, which exists here for 3 languages only: sample from dev
    # instead, and hold these out of the evaluation split (tydiqa_eval_split).
    out = []
    for lang in TYDIQA_LANGUAGES:
        q = _tydiqa_pick(tydiqa_dev_questions(data_root, lang), lang, seed, max_context_chars)
        instr, p, qcue, a = TYDIQA_TEMPLATES[lang]
        user = f"{instr}\n\n{p} {q['context']}\n{qcue} {q['question']}\n{a}"
        out.append(make_record("tydiqa", chat(user, q["answers"][0]), id=q["id"], task="tydiqa", subtask=lang))
    return out


def tydiqa_eval_split(data_root: Path, seed: int = 0, max_per_language: int | None = 200,
                      max_context_chars: int = 2000) -> list[dict[str, Any]]:
    """Dev questions for evaluation, never including build_tydiqa's targets (same seed and
    max_context_chars): the first `max_per_language` per language (None = all), file order.
    `answers` is the list of gold answer texts."""
    out = []
    for lang in TYDIQA_LANGUAGES:
        questions = tydiqa_dev_questions(data_root, lang)
        held_out = _tydiqa_pick(questions, lang, seed, max_context_chars)["id"]
        kept = [q for q in questions if q["id"] != held_out]
        out += kept if max_per_language is None else kept[:max_per_language]
    return out


# --- MMLU: first k dev rows of each of the 57 subjects -----------------------------------------
def build_mmlu(data_root: Path, k: int = 5) -> list[Record]:
    out, problems = [], []
    for path in sorted((Path(data_root) / "mmlu" / "dev").glob("*_dev.csv")):
        subject = path.name.removesuffix("_dev.csv")
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            # This copy has a header row and integer answers 0-3 (mmlu/SOURCE.md).
            if next(reader, None) != ["question", "choice0", "choice1", "choice2", "choice3", "answer"]:
                problems.append(DataProblem(str(path), 1, "expected header question,choice0..3,answer"))
                continue
            for i, row in enumerate(reader):
                if i >= k:
                    break
                try:
                    if len(row) != 6:
                        raise ValueError(f"expected 6 columns, got {len(row)}")
                    if row[5].strip() not in ("0", "1", "2", "3"):
                        raise ValueError(f"answer must be 0-3, got {row[5]!r}")
                    q, *choices, ans = row
                    opts = "\n".join(f"{L}. {c}" for L, c in zip("ABCD", choices))
                    out.append(make_record("mmlu", chat(f"{head}{q}\n{opts}\nAnswer:", "ABCD"[int(ans)]),
                                           id=f"mmlu/{subject}:{i}", task="mmlu", subtask=subject))
                except (ValueError, RecordError) as e:
                    problems.append(DataProblem(str(path), reader.line_num, str(e)))
    if problems:
        raise DataFileError(problems)
    return out


TARGET_BUILDERS: dict[str, Callable[..., list[Record]]] = {
    "bbh": build_bbh, "tydiqa": build_tydiqa, "mmlu": build_mmlu}


def build_targets(name: str, data_root: Path | None = None, **kw: Any) -> list[Record]:
    if name not in TARGET_BUILDERS:
        raise KeyError(f"unknown target set {name!r}; known: {list(TARGET_BUILDERS)}")
    if data_root is None:
        from less_ray.data.sources import default_data_root
        data_root = default_data_root()
    return TARGET_BUILDERS[name](Path(data_root), **kw)
