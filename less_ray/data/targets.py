"""LESS's target (validation) sets: BBH 81, TydiQA 9, MMLU 285 few-shot examples.

Built as princeton-nlp/LESS `less/data_selection/get_validation_dataset.py` builds them. LESS
tokenises `query + completion` with the query, in tulu format, ending in the answer cue:

    <|user|>\n{user}\n<|assistant|>\n{cue}{completion}

labels on the completion's tokens only, no eos. Each record holds that as a `validation`
conversation (schema.validation): the user text, the cue and the completion, all verbatim;
chat_format less renders exactly the text above. Per set:
- bbh: per task, the 3 CoT exemplars of `bbh/cot-prompts/<task>.txt` (LESS reads them from its
  `bbh-three-shot.json`, not in our data; the same text as `"".join(lines[2:])` of these files,
  what LESS's BBH evaluation reads). The text is split at blank lines, the last 3 parts being
  the exemplars, the rest the task prompt; user = `{prompt}\n\n{other exemplar}\n\n{other
  exemplar}\n\n{Q: question}`, cue "A:", completion = the text after "\nA:" (leading space kept).
- mmlu: the first 5 dev rows of each subject; user = "The following are multiple choice
  questions (with answers) about {subject}.\n\n{question}\nA. ..\nD. ..\nAnswer:" where
  {subject} is LESS's `format_subject` (" abstract algebra": two spaces after "about"), cue
  "The answer is:", completion " B". This copy has a header row and 0-3 answers (mmlu/SOURCE.md).
- tydiqa: 1 GoldP example per language; user = "{instruction}{Passage:} {context}\n{Question:}
  {question}" (no separator after the instruction, as LESS), cue "Answer:", completion
  " {first answer}". LESS draws it from GoldP *train* (`tydiqa-one-shot.json`); train exists
  here for english, korean and swahili only: those draw from train, the other six from dev,
  held out of evaluation (tydiqa_eval_split). The draw is among questions whose passage has at
  most `max_context_chars` (2000) characters: LESS draws among all, but a long passage can
  push the answer past max_seq_length (SmolLM2: the Telugu draw of seed 0 without the bound is
  8,620 tokens), and LESS would then give that language a NaN target gradient.
Each list is grouped by subtask (subtasks sorted by name; file order within a subtask).
"""
from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path
from typing import Any, Callable

from less_ray.data.schema import DataFileError, DataProblem, Record, RecordError, make_record, validation


# --- BBH: 27 tasks x 3 chain-of-thought exemplars -----------------------------------------------
def bbh_task_prompt(path: Path) -> str:
    """A cot-prompts file without its canary and '-----' lines: `"".join(lines[2:])`, as LESS reads it."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    if len(lines) < 3 or "canary" not in lines[0] or lines[1].strip() != "-----":
        raise DataFileError([DataProblem(str(path), 1, "expected a canary line, then '-----'")])
    return "".join(lines[2:])


def split_bbh_prompt(path: Path, text: str) -> tuple[str, list[str]]:
    """LESS's split of a task's 3-shot text: (task prompt, the 3 exemplars 'Q: ...\nA: ...')."""
    stuff = text.split("\n\n")
    exemplars, prompt = stuff[-3:], "\n\n".join(stuff[:-3])
    bad = [i for i, e in enumerate(exemplars) if e.count("\nA:") != 1 or not e.startswith("Q:")]
    if len(stuff) < 4 or bad:
        raise DataFileError([DataProblem(str(path), 0, f"expected a task prompt, then 3 blank-line separated "
                                                      f"'Q: ...\\nA: ...' exemplars (bad: {bad})")])
    return prompt, exemplars


def _parse_cot_prompt(path: Path) -> tuple[str, list[str]]:
    """(task prompt, exemplars) of one bbh/cot-prompts file."""
    return split_bbh_prompt(path, bbh_task_prompt(path))


def build_bbh(data_root: Path) -> list[Record]:
    out = []
    for path in sorted((Path(data_root) / "bbh" / "cot-prompts").glob("*.txt")):
        task = path.stem
        prompt, exemplars = _parse_cot_prompt(path)
        for k, ex in enumerate(exemplars):
            question, answer = ex.split("\nA:")
            icl = "".join(e + "\n\n" for j, e in enumerate(exemplars) if j != k)  # LESS's form_icl
            user = prompt.strip() + "\n\n" + icl + question
            out.append(make_record("bbh", validation(user, "A:", answer),
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


def tydiqa_train_questions(data_root: Path, lang: str) -> list[dict[str, Any]] | None:
    """GoldP train questions of one language in file order, or None where this copy lacks the file."""
    path = Path(data_root) / "tydiqa" / "language_data" / lang / f"{lang}_tydiqa_train.json.gz"
    if not path.exists():
        return None
    try:
        data = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8"))["data"]
        return [{"id": qa["id"], "language": lang, "context": para["context"], "question": qa["question"],
                 "answers": [a["text"] for a in qa["answers"]]}
                for article in data for para in article["paragraphs"] for qa in para["qas"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataFileError([DataProblem(str(path), 0, f"not gzip'ed SQuAD-v1.1 JSON: {type(e).__name__}: {e}")]) from e


def _tydiqa_pick(questions: list[dict[str, Any]], lang: str, seed: int,
                 max_context_chars: int | None) -> dict[str, Any]:
    pool = [q for q in questions if q["answers"] and (max_context_chars is None or len(q["context"]) <= max_context_chars)]
    if not pool:
        raise ValueError(f"tydiqa {lang}: no question with an answer and context <= {max_context_chars} chars")
    return random.Random(f"{seed}:{lang}").choice(pool)  # str seeds are stable across processes


def tydiqa_target_question(data_root: Path, lang: str, seed: int = 0,
                           max_context_chars: int | None = 2000) -> tuple[dict[str, Any], str]:
    """(the language's target question, "train" or "dev": the split it was drawn from)."""
    train = tydiqa_train_questions(data_root, lang)
    if train is not None:
        return _tydiqa_pick(train, lang, seed, max_context_chars), "train"
    return _tydiqa_pick(tydiqa_dev_questions(data_root, lang), lang, seed, max_context_chars), "dev"


def tydiqa_user(lang: str, context: str, question: str) -> str:
    """LESS's TydiQA user text (the prompt before its final newline): no separator after the instruction."""
    instr, p, q, _ = TYDIQA_TEMPLATES[lang]
    return instr + p + " " + context + "\n" + q + " " + question


def build_tydiqa(data_root: Path, seed: int = 0, max_context_chars: int | None = 2000) -> list[Record]:
    # LESS: one GoldP *train* example per language (its random draw is not reproducible: it depends
    # on set order); here a seeded uniform draw, from train where this copy has it, else from dev
    out = []
    for lang in TYDIQA_LANGUAGES:
        q, _ = tydiqa_target_question(data_root, lang, seed, max_context_chars)
        msgs = validation(tydiqa_user(lang, q["context"], q["question"]), TYDIQA_TEMPLATES[lang][3],
                          " " + q["answers"][0])
        out.append(make_record("tydiqa", msgs, id=q["id"], task="tydiqa", subtask=lang))
    return out


def tydiqa_eval_split(data_root: Path, seed: int = 0, max_per_language: int | None = 200,
                      max_context_chars: int | None = 2000) -> list[dict[str, Any]]:
    """Dev questions for evaluation, never including build_tydiqa's targets (same seed and
    max_context_chars): the first `max_per_language` per language (None = all), file order.
    `answers` is the list of gold answer texts."""
    out = []
    for lang in TYDIQA_LANGUAGES:
        questions = tydiqa_dev_questions(data_root, lang)
        held_out = tydiqa_target_question(data_root, lang, seed, max_context_chars)[0]["id"]
        kept = [q for q in questions if q["id"] != held_out]
        out += kept if max_per_language is None else kept[:max_per_language]
    return out


# --- MMLU: first k dev rows of each of the 57 subjects -----------------------------------------
def mmlu_head(subject: str) -> str:
    """LESS's header: its format_subject prefixes every word with a space ("about  abstract algebra.")."""
    return "The following are multiple choice questions (with answers) about {}.\n\n".format(
        "".join(" " + w for w in subject.split("_")))


def mmlu_example(row: list[str], with_answer: bool) -> str:
    """LESS's format_example of a (question, 4 choices, answer 0-3) row. The cells are used as
    read: for the dev rows this is what LESS's pandas reading gives (checked: every cell equal)."""
    q, *choices, ans = row
    text = q + "".join("\n{}. {}".format(L, c) for L, c in zip("ABCD", choices)) + "\nAnswer:"
    return text + (" {}\n\n".format("ABCD"[int(ans)]) if with_answer else "")


def build_mmlu(data_root: Path, k: int = 5) -> list[Record]:
    out, problems = [], []
    for path in sorted((Path(data_root) / "mmlu" / "dev").glob("*_dev.csv")):
        subject = path.name.removesuffix("_dev.csv")
        head = mmlu_head(subject)
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
                    out.append(make_record("mmlu", validation(head + mmlu_example(row, False), "The answer is:",
                                                              " " + "ABCD"[int(row[5])]),
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
