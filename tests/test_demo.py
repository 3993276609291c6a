import json
import re
from collections import Counter

import pytest

from less_ray.data import demo
from less_ray.data.demo import FAMILIES, TEMPLATES, generate_pool, generate_targets, write_demo_data
from less_ray.data.schema import record_from_dict


@pytest.fixture(scope="module")
def pool():
    return generate_pool()


def _first_user(r):
    return next(m["content"] for m in r.messages if m["role"] == "user")


def _template_regex(t):
    # "What is {a} + {b}?" -> ^What\ is\ (.+?)\ \+\ (.+?)\?$
    parts = re.split(r"\{\w+\}", t)
    return re.compile("^" + "(.+?)".join(re.escape(p) for p in parts) + "$")


def test_families():
    assert len(FAMILIES) >= 8 and len(set(FAMILIES)) == len(FAMILIES)
    assert all(len(demo.SUBTASKS[f]) >= 2 for f in FAMILIES)


def test_deterministic(pool):
    assert generate_pool() == pool
    assert generate_pool(seed=1) != pool
    assert generate_targets() == generate_targets()
    assert generate_targets(seed=2) != generate_targets()


def test_smaller_pool_is_per_family_prefix(pool):
    small = generate_pool(200)
    assert small == [r for r in pool if int(r.id.rsplit(":", 1)[1]) < 20]


def test_balanced_ids_sources(pool):
    counts = Counter(r.source for r in pool)
    assert set(counts) == {f"demo/{f}" for f in FAMILIES}
    assert max(counts.values()) - min(counts.values()) <= 1
    odd = Counter(r.source for r in generate_pool(n=1003))
    assert sum(odd.values()) == 1003 and max(odd.values()) - min(odd.values()) <= 1
    assert len({r.id for r in pool}) == len(pool)
    assert all(r.id.startswith(r.source + ":") for r in pool)
    assert all(r.task is None and r.subtask is None for r in pool)


def test_family_subset():
    recs = generate_pool(30, families=("capitals", "sorting"))
    assert Counter(r.source for r in recs) == {"demo/capitals": 15, "demo/sorting": 15}
    with pytest.raises(ValueError, match="unknown demo family"):
        generate_pool(10, families=("nope",))


def test_prompts_match_templates_and_vary(pool):
    for f in FAMILIES:
        regexes = [_template_regex(t) for ts in TEMPLATES[f].values() for t in ts]
        used = Counter()
        for r in pool:
            if r.source == f"demo/{f}":
                hits = [i for i, rx in enumerate(regexes) if rx.match(_first_user(r))]
                assert hits, _first_user(r)
                used[hits[0]] += 1
        assert len(used) >= 2, f  # several phrasings per family, actually used


def test_multi_turn_and_system(pool):
    multi = [r for r in pool if sum(m["role"] == "assistant" for m in r.messages) == 2]
    system = [r for r in pool if r.messages[0]["role"] == "system"]
    assert 0.02 * len(pool) < len(multi) < 0.1 * len(pool)
    assert 0 < len(system) < 0.1 * len(pool)
    for r in multi:
        roles = [m["role"] for m in r.messages if m["role"] != "system"]
        assert roles == ["user", "assistant", "user", "assistant"]


ARITH = re.compile(r"^(\d+) ([-+*]) (\d+) = (-?\d+)\. So the answer is (-?\d+)\.$")


def _check_arith(prompt, answer):
    a, op, b, c, final = ARITH.match(answer).groups()
    a, b, c = int(a), int(b), int(c)
    assert c == int(final) == {"+": a + b, "-": a - b, "*": a * b}[op]
    assert {str(a), str(b)} <= set(re.findall(r"\d+", prompt))


def test_arithmetic_is_correct(pool):
    recs = [r for r in pool if r.source == "demo/arithmetic"] + generate_targets("arithmetic", 30)
    for r in recs:
        msgs = [m for m in r.messages if m["role"] != "system"]
        for q, a in zip(msgs[::2], msgs[1::2]):
            _check_arith(q["content"], a["content"])


def test_other_answers_are_correct(pool):
    for r in pool:
        if len([m for m in r.messages if m["role"] != "system"]) != 2:
            continue  # single-turn only: one question, one answer
        q, a = _first_user(r), r.messages[-1]["content"]
        if r.source == "demo/sorting":
            items = re.split(r", ", q.split(": ", 1)[1].rstrip("."))
            got = a.removeprefix("Sorted: ").rstrip(".").split(", ")
            key = int if items[0].isdigit() else str
            assert [key(x) for x in got] in (sorted(map(key, items)), sorted(map(key, items), reverse=True))
        if r.source == "demo/reversal" and "'" in q:
            w = re.findall(r"'(\w+)'", q)[0]
            assert a == f"'{w}' reversed is '{w[::-1]}'."


def test_targets(pool):
    for f in FAMILIES:
        ts = generate_targets(f, n=12)
        assert len(ts) == 12
        assert all(t.task == f"demo_{f}" and t.source == f"demo_target/{f}" for t in ts)
        subs = [t.subtask for t in ts]
        assert subs == sorted(subs)  # grouped by subtask, subtasks sorted by name
        assert set(subs) == set(demo.SUBTASKS[f])  # every sub-kind covered
        assert len({t.id for t in ts}) == 12
        assert len({_first_user(t) for t in ts}) == 12
    pool_texts = {m["content"] for r in pool for m in r.messages}
    pool_convs = {tuple(m["content"] for m in r.messages) for r in pool}
    for f in FAMILIES:
        for t in generate_targets(f, n=40):
            assert _first_user(t) not in pool_texts
            assert tuple(m["content"] for m in t.messages) not in pool_convs
    with pytest.raises(ValueError, match="unknown demo family"):
        generate_targets("nope")


def test_targets_avoid_given_pool():
    other = generate_pool(500, seed=7)
    users = {m["content"] for r in other for m in r.messages if m["role"] == "user"}
    ts = generate_targets("capitals", n=20, avoid=other)
    assert not users & {_first_user(t) for t in ts}


def test_write_demo_data(tmp_path):
    info = write_demo_data(tmp_path / "d", n_pool=100, target_family="sorting", n_targets=6)
    assert info["pool"]["n"] == 100 and info["targets"]["n"] == 6
    assert info["targets"]["counts"] == {"demo_target/sorting": 6}
    assert sum(info["pool"]["counts"].values()) == 100
    for name, expected in (("pool", generate_pool(100)), ("targets", None)):
        with open(info[name]["path"], encoding="utf-8") as fh:
            recs = [record_from_dict(json.loads(line)) for line in fh]
        if expected is not None:
            assert recs == expected
        else:
            assert [r.subtask for r in recs] == sorted(r.subtask for r in recs)
            assert all(r.task == "demo_sorting" for r in recs)
