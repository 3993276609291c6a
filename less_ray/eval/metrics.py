"""Metrics as open-instruct computes them for BBH, MMLU and TydiQA."""
from __future__ import annotations

import re
import string
from collections import Counter


def bbh_extract(generation: str) -> str:
    """The answer after the last "So the answer is", without a trailing period."""
    text = generation.split("So the answer is")[-1] if "So the answer is" in generation else generation
    text = text.strip().split("\n")[0].strip()
    return text[:-1] if text.endswith(".") else text


def exact_match(prediction: str, gold: str) -> float:
    return float(prediction.strip() == gold.strip())


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no English articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def max_f1(prediction: str, golds: list[str]) -> float:
    return max(f1(prediction, g) for g in golds)
