"""Deterministic demo data: an instruction pool with planted task families.

The pool mixes FAMILIES (arithmetic, string reversal, sorting, ...) written as natural
instructions with several phrasings each; a target set is drawn from one family, so a
correct gradient-based selector should visibly prefer that family's pool records.
Everything is generated here (no downloads). Randomness comes only from explicit
`random.Random` objects seeded with strings (seeded via SHA-512, so the output is the
same on every machine and independent of PYTHONHASHSEED).
"""
from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .io import write_jsonl
from .schema import Record, chat, make_record

Fill = Callable[[random.Random], tuple[dict, str]]  # rng -> (template fields, answer)


@dataclass(frozen=True)
class _Sub:
    """One sub-kind of a family: prompt templates plus a filler that makes fields + answer."""
    templates: tuple[str, ...]
    fill: Fill


# --- small built-in tables -------------------------------------------------------------

_WORDS = (
    "apple", "river", "garden", "pencil", "window", "orange", "banana", "silver", "planet",
    "rocket", "candle", "forest", "bridge", "yellow", "guitar", "castle", "dragon", "mirror",
    "pepper", "basket", "jacket", "ladder", "monkey", "island", "summer", "winter", "spring",
    "autumn", "butter", "coffee", "doctor", "engine", "flower", "hammer", "kitten", "lemon",
    "marble", "needle", "ocean", "puzzle", "rabbit", "saddle", "tomato", "violin", "wallet",
    "zebra", "cloud", "storm", "light", "stone", "bread", "chair", "table", "horse", "tiger",
    "music", "paper", "glass", "sugar", "honey", "cat", "dog", "sun", "moon", "tree", "book",
    "elephant", "umbrella", "mountain", "chocolate", "telephone", "butterfly",
)

_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Australia", "Canberra"), ("Russia", "Moscow"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Turkey", "Ankara"), ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"),
    ("Czechia", "Prague"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Morocco", "Rabat"),
    ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Cuba", "Havana"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
    ("Philippines", "Manila"), ("New Zealand", "Wellington"), ("Pakistan", "Islamabad"),
)

_ANIMALS = (
    ("dog", "mammal"), ("cat", "mammal"), ("whale", "mammal"), ("dolphin", "mammal"),
    ("bat", "mammal"), ("horse", "mammal"), ("elephant", "mammal"), ("tiger", "mammal"),
    ("eagle", "bird"), ("penguin", "bird"), ("owl", "bird"), ("parrot", "bird"),
    ("ostrich", "bird"), ("sparrow", "bird"), ("salmon", "fish"), ("shark", "fish"),
    ("trout", "fish"), ("tuna", "fish"), ("goldfish", "fish"), ("snake", "reptile"),
    ("lizard", "reptile"), ("crocodile", "reptile"), ("turtle", "reptile"), ("iguana", "reptile"),
    ("ant", "insect"), ("bee", "insect"), ("beetle", "insect"), ("butterfly", "insect"),
    ("mosquito", "insect"), ("grasshopper", "insect"),
)
_CLASSES = ("mammal", "bird", "fish", "reptile", "insect")

_SYNONYMS = (
    ("happy", "glad"), ("big", "large"), ("small", "tiny"), ("fast", "quick"), ("begin", "start"),
    ("end", "finish"), ("smart", "clever"), ("angry", "mad"), ("easy", "simple"),
    ("hard", "difficult"), ("rich", "wealthy"), ("sad", "unhappy"), ("shout", "yell"),
    ("look", "see"), ("help", "assist"), ("brave", "bold"), ("calm", "peaceful"),
    ("close", "shut"), ("gift", "present"), ("jump", "leap"), ("odd", "strange"),
    ("quiet", "silent"), ("ready", "prepared"), ("sick", "ill"), ("tired", "sleepy"),
    ("wet", "damp"), ("choose", "pick"), ("buy", "purchase"), ("build", "construct"),
    ("little", "small"), ("correct", "right"), ("fix", "repair"), ("car", "automobile"),
    ("mistake", "error"), ("funny", "amusing"), ("scared", "afraid"),
)
_ANTONYMS = (
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("happy", "sad"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
    ("high", "low"), ("old", "young"), ("rich", "poor"), ("strong", "weak"), ("thick", "thin"),
    ("wet", "dry"), ("win", "lose"), ("push", "pull"), ("buy", "sell"), ("day", "night"),
    ("love", "hate"), ("loud", "quiet"), ("near", "far"), ("true", "false"), ("inside", "outside"),
    ("begin", "end"), ("clean", "dirty"), ("easy", "difficult"), ("heavy", "light"),
    ("long", "short"), ("left", "right"), ("first", "last"), ("give", "take"),
    ("friend", "enemy"), ("remember", "forget"), ("arrive", "leave"),
)

# (unit, singular/plural names) -> conversion pairs (big unit, small unit, factor)
_UNITS = {
    "length": ((("kilometre", "kilometres"), ("metre", "metres"), 1000),
               (("metre", "metres"), ("centimetre", "centimetres"), 100),
               (("centimetre", "centimetres"), ("millimetre", "millimetres"), 10)),
    "mass": ((("tonne", "tonnes"), ("kilogram", "kilograms"), 1000),
             (("kilogram", "kilograms"), ("gram", "grams"), 1000),
             (("gram", "grams"), ("milligram", "milligrams"), 1000)),
    "time": ((("day", "days"), ("hour", "hours"), 24),
             (("hour", "hours"), ("minute", "minutes"), 60),
             (("minute", "minutes"), ("second", "seconds"), 60)),
}

_SYSTEMS = ("You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
            "Answer the user's question accurately.")
_FOLLOWUPS = ("Thanks. Now: ", "Great. One more: ", "Next question: ")
MULTI_TURN_RATE = 0.05  # share of pool records that are two-turn conversations
SYSTEM_RATE = 0.03      # share of pool records that open with a system message


# --- fillers ---------------------------------------------------------------------------

def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _phrase(rng: random.Random, lo: int, hi: int) -> list[str]:
    return rng.sample(_WORDS, rng.randint(lo, hi))


def _qty(n: int, unit: tuple[str, str]) -> str:
    return f"{n} {unit[0] if n == 1 else unit[1]}"


def _addition(rng):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return {"a": a, "b": b}, f"{a} + {b} = {a + b}. So the answer is {a + b}."


def _subtraction(rng):
    a = rng.randint(10, 99)
    b = rng.randint(1, a)  # keep results non-negative: simpler for a tiny model
    return {"a": a, "b": b}, f"{a} - {b} = {a - b}. So the answer is {a - b}."


def _multiplication(rng):
    a, b = rng.randint(2, 15), rng.randint(2, 15)
    return {"a": a, "b": b}, f"{a} * {b} = {a * b}. So the answer is {a * b}."


def _reverse_word(rng):
    w = rng.choice(_WORDS)
    return {"w": w}, f"'{w}' reversed is '{w[::-1]}'."


def _reverse_order(rng):
    ws = _phrase(rng, 3, 5)
    return {"p": " ".join(ws)}, f"In reverse order: {' '.join(reversed(ws))}"


def _sort_numbers(descending: bool) -> Fill:
    def fill(rng):
        xs = rng.sample(range(1, 100), rng.randint(4, 6))
        ys = sorted(xs, reverse=descending)
        return {"xs": ", ".join(map(str, xs))}, f"Sorted: {', '.join(map(str, ys))}."
    return fill


def _sort_words(rng):
    ws = _phrase(rng, 3, 5)
    return {"xs": ", ".join(ws)}, f"Sorted: {', '.join(sorted(ws))}."


def _convert(kind: str) -> Fill:
    def fill(rng):
        big, small, f = rng.choice(_UNITS[kind])
        k = rng.randint(1, 50)
        if rng.random() < 0.5:  # big -> small
            fields, src, dst = {"v": k, "u1": big[k != 1], "u2": small[1]}, _qty(k, big), _qty(k * f, small)
        else:                   # small -> big, chosen so the result is a whole number
            fields, src, dst = {"v": k * f, "u1": small[1], "u2": big[1]}, _qty(k * f, small), _qty(k, big)
        return fields, f"1 {big[0]} = {f} {small[1]}, so {src} = {dst}."
    return fill


def _fact_geography(rng):
    country, city = rng.choice(_CAPITALS)
    if rng.random() < 0.5:
        return {"x": city, "y": country}, f"Yes. {city} is the capital of {country}."
    other = rng.choice([c for _, c in _CAPITALS if c != city])
    return {"x": other, "y": country}, f"No. The capital of {country} is {city}."


def _fact_animal(rng):
    animal, cls = rng.choice(_ANIMALS)
    a = _article(animal)
    if rng.random() < 0.5:
        return {"a": a, "c": _article(cls)}, f"Yes. {a.capitalize()} is {_article(cls)}."
    wrong = rng.choice([c for c in _CLASSES if c != cls])
    return {"a": a, "c": _article(wrong)}, f"No. {a.capitalize()} is {_article(cls)}, not {_article(wrong)}."


def _case(convert: Callable[[str], str], title_input: bool = False) -> Fill:
    def fill(rng):
        p = " ".join(_phrase(rng, 2, 5))
        p = p.title() if title_input else p  # lower-casing needs capitals to remove
        return {"p": p}, convert(p)
    return fill


def _count_letters(rng):
    w = rng.choice(_WORDS)
    return {"w": w}, f"'{w}' has {len(w)} letters. So the answer is {len(w)}."


def _count_occurrences(rng):
    w = rng.choice(_WORDS)
    c = rng.choice(w) if rng.random() < 0.8 else rng.choice("aeiorstn")
    n = w.count(c)
    return {"w": w, "c": c}, f"The letter '{c}' appears {n} time{'' if n == 1 else 's'} in '{w}'. So the answer is {n}."


def _count_words(rng):
    ws = _phrase(rng, 3, 8)
    return {"s": " ".join(ws)}, f"There are {len(ws)} words. So the answer is {len(ws)}."


def _capital_of(rng):
    country, city = rng.choice(_CAPITALS)
    return {"country": country}, f"The capital of {country} is {city}."


def _country_of(rng):
    country, city = rng.choice(_CAPITALS)
    return {"city": city}, f"{city} is the capital of {country}."


def _word_pair(table, answer: str) -> Fill:
    def fill(rng):
        pair = rng.choice(table)
        i = rng.randrange(2)  # either word of a pair can be the question
        return {"w": pair[i]}, answer.format(w=pair[i], s=pair[1 - i])
    return fill


def _compare_numbers(larger: bool) -> Fill:
    def fill(rng):
        a, b = rng.sample(range(1, 1000), 2)
        hi, lo = max(a, b), min(a, b)
        return {"a": a, "b": b}, (f"{hi} is larger than {lo}." if larger else f"{lo} is smaller than {hi}.")
    return fill


def _compare_length(rng):
    while True:  # resample until the words differ in length, so there is one answer
        a, b = rng.sample(_WORDS, 2)
        if len(a) != len(b):
            break
    x, y = (a, b) if len(a) > len(b) else (b, a)
    return {"a": a, "b": b}, f"'{x}' has {len(x)} letters and '{y}' has {len(y)}, so '{x}' is longer."


# --- the families ----------------------------------------------------------------------

_SPECS: dict[str, dict[str, _Sub]] = {
    "arithmetic": {
        "addition": _Sub(("What is {a} + {b}?", "Compute {a} plus {b}.", "Add {a} and {b}.",
                          "What is the sum of {a} and {b}?"), _addition),
        "subtraction": _Sub(("What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}.",
                             "What is the difference between {a} and {b}?"), _subtraction),
        "multiplication": _Sub(("What is {a} times {b}?", "Multiply {a} by {b}.",
                                "Compute the product of {a} and {b}.", "What is {a} * {b}?"), _multiplication),
    },
    "reversal": {
        "characters": _Sub(("Reverse the word '{w}'.", "Spell '{w}' backwards.",
                            "Write the letters of '{w}' in reverse order."), _reverse_word),
        "word_order": _Sub(("Reverse the order of the words in: {p}",
                            "Write these words in reverse order: {p}",
                            "Say this sentence backwards, word by word: {p}"), _reverse_order),
    },
    "sorting": {
        "ascending": _Sub(("Sort these numbers from smallest to largest: {xs}.",
                           "Arrange in ascending order: {xs}.",
                           "Put these numbers in increasing order: {xs}."), _sort_numbers(False)),
        "descending": _Sub(("Sort these numbers from largest to smallest: {xs}.",
                            "Arrange in descending order: {xs}.",
                            "Put these numbers in decreasing order: {xs}."), _sort_numbers(True)),
        "alphabetical": _Sub(("Sort these words alphabetically: {xs}.",
                              "Put these words in alphabetical order: {xs}."), _sort_words),
    },
    "unit_conversion": {
        kind: _Sub(("Convert {v} {u1} to {u2}.", "How many {u2} are in {v} {u1}?",
                    "Express {v} {u1} in {u2}."), _convert(kind))
        for kind in _UNITS
    },
    "yes_no_facts": {
        "geography": _Sub(("Is {x} the capital of {y}?", "Answer yes or no: is {x} the capital city of {y}?",
                           "True or false: {x} is the capital of {y}. Answer yes or no."), _fact_geography),
        "animals": _Sub(("Is {a} {c}?", "Answer yes or no: is {a} {c}?",
                         "True or false: {a} is {c}. Answer yes or no."), _fact_animal),
    },
    "capitalisation": {
        "upper": _Sub(("Convert to uppercase: {p}", "Write this in capital letters: {p}",
                       "Rewrite in all caps: {p}"), _case(str.upper)),
        "lower": _Sub(("Convert to lowercase: {p}", "Write this in small letters only: {p}"),
                      _case(str.lower, title_input=True)),
        "title": _Sub(("Capitalise the first letter of each word: {p}", "Convert to title case: {p}"),
                      _case(str.title)),
    },
    "counting": {
        "letters": _Sub(("How many letters are in the word '{w}'?", "Count the letters in '{w}'.",
                         "What is the length of the word '{w}' in letters?"), _count_letters),
        "letter_occurrences": _Sub(("How many times does the letter '{c}' appear in '{w}'?",
                                    "Count how many times '{c}' occurs in the word '{w}'."), _count_occurrences),
        "words": _Sub(("How many words are in this sentence: {s}", "Count the words in: {s}"), _count_words),
    },
    "capitals": {
        "capital_of": _Sub(("What is the capital of {country}?", "Name the capital city of {country}.",
                            "Which city is the capital of {country}?"), _capital_of),
        "country_of": _Sub(("{city} is the capital of which country?",
                            "Which country has {city} as its capital?",
                            "Of which country is {city} the capital?"), _country_of),
    },
    "synonyms_antonyms": {
        "synonym": _Sub(("What is a synonym for '{w}'?", "Give a word that means the same as '{w}'.",
                         "Name a synonym of '{w}'."), _word_pair(_SYNONYMS, "A synonym for '{w}' is '{s}'.")),
        "antonym": _Sub(("What is the opposite of '{w}'?", "Give an antonym for '{w}'.",
                         "Name a word that means the opposite of '{w}'."),
                        _word_pair(_ANTONYMS, "The opposite of '{w}' is '{s}'.")),
    },
    "comparison": {
        "larger": _Sub(("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?",
                        "Is {a} or {b} the greater number?"), _compare_numbers(True)),
        "smaller": _Sub(("Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?"),
                        _compare_numbers(False)),
        "longer_word": _Sub(("Which word is longer, '{a}' or '{b}'?",
                             "Which has more letters: '{a}' or '{b}'?"), _compare_length),
    },
}

FAMILIES: tuple[str, ...] = tuple(_SPECS)
SUBTASKS: dict[str, tuple[str, ...]] = {f: tuple(sorted(s)) for f, s in _SPECS.items()}
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    f: {name: sub.templates for name, sub in subs.items()} for f, subs in _SPECS.items()}


def _check_family(family: str) -> None:
    if family not in _SPECS:
        raise ValueError(f"unknown demo family {family!r} (expected one of {', '.join(FAMILIES)})")


def _example(rng: random.Random, family: str, subtask: str) -> tuple[str, str]:
    sub = _SPECS[family][subtask]
    fields, answer = sub.fill(rng)
    return rng.choice(sub.templates).format(**fields), answer


# --- public API ------------------------------------------------------------------------

def generate_pool(n: int = 2000, seed: int = 0, families: Iterable[str] = FAMILIES) -> list[Record]:
    """`n` pool records, round-robin over `families` (counts differ by at most 1).

    Each family draws from its own RNG stream, so a smaller pool is a prefix (per family)
    of a larger one with the same seed. ~5% are two-turn, ~3% carry a system message.
    """
    families = tuple(families)
    for f in families:
        _check_family(f)
    rngs = {f: random.Random(f"demo-pool/{seed}/{f}") for f in families}
    out = []
    for i in range(n):
        family, k = families[i % len(families)], i // len(families)
        rng = rngs[family]
        prompt, answer = _example(rng, family, rng.choice(SUBTASKS[family]))
        system = rng.choice(_SYSTEMS) if rng.random() < SYSTEM_RATE else None
        messages = chat(prompt, answer, system)
        if rng.random() < MULTI_TURN_RATE:  # a follow-up question of the same family
            prompt2, answer2 = _example(rng, family, rng.choice(SUBTASKS[family]))
            messages += chat(rng.choice(_FOLLOWUPS) + prompt2, answer2)
        out.append(make_record(f"demo/{family}", messages, id=f"demo/{family}:{k}"))
    return out


def _user_texts(records: Iterable[Record]) -> set[str]:
    return {m["content"] for r in records for m in r.messages if m["role"] == "user"}


@functools.lru_cache(maxsize=1)
def _default_pool_texts() -> frozenset[str]:
    return frozenset(_user_texts(generate_pool()))  # cached: targets are made often, the pool is fixed


def generate_targets(family: str = "arithmetic", n: int = 12, seed: int = 1,
                     avoid: Iterable[Record] | None = None) -> list[Record]:
    """`n` single-turn target examples of `family`, grouped by subtask (sorted by name).

    Subtasks are covered round-robin. No target prompt equals a user turn in `avoid`
    (default: the default demo pool), so targets are never copies of pool examples.
    """
    _check_family(family)
    seen = set(_default_pool_texts()) if avoid is None else _user_texts(avoid)
    rng = random.Random(f"demo-targets/{seed}/{family}")  # a stream disjoint from the pool's
    subtasks = SUBTASKS[family]
    picked: list[tuple[str, str, str]] = []
    for j in range(n):
        subtask = subtasks[j % len(subtasks)]
        for _ in range(10_000):
            prompt, answer = _example(rng, family, subtask)
            if prompt not in seen:
                break
        else:
            raise ValueError(f"cannot find {n} fresh '{family}/{subtask}' targets that avoid the pool")
        seen.add(prompt)  # no duplicate targets either
        picked.append((subtask, prompt, answer))
    picked.sort(key=lambda t: t[0])  # stable: keeps generation order within a subtask
    counters: Counter[str] = Counter()
    out = []
    for subtask, prompt, answer in picked:
        out.append(make_record(f"demo_target/{family}", chat(prompt, answer),
                               id=f"demo_target/{family}/{subtask}:{counters[subtask]}",
                               task=f"demo_{family}", subtask=subtask))
        counters[subtask] += 1
    return out


def write_demo_data(out_dir, n_pool: int = 2000, target_family: str = "arithmetic",
                    n_targets: int = 12, seed: int = 0) -> dict:
    """Write `pool.jsonl` and `targets.jsonl` under `out_dir`; return paths and counts by source."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pool = generate_pool(n_pool, seed=seed)
    targets = generate_targets(target_family, n_targets, seed=seed + 1, avoid=pool)
    result = {}
    for name, records in (("pool", pool), ("targets", targets)):
        path = out / f"{name}.jsonl"
        write_jsonl(records, path)
        result[name] = {"path": str(path), "n": len(records),
                        "counts": dict(sorted(Counter(r.source for r in records).items()))}
    return result
