"""MinHash LSH dedup: planted near-duplicates are found, distinct texts kept, counts add up.

Estimated Jaccards are checked against the exact Jaccard of the shingle sets (set arithmetic),
and on the demo pool every kept pair is checked by brute force.
"""
import itertools
import json

import pytest

from less_ray.data.demo import generate_pool
from less_ray.data.io import read_records, write_jsonl
from less_ray.data.schema import Record
from less_ray.selection.minhash import conversation_text, shingles
from less_ray.selectors.minhash import DedupConfig, run_dedup

WORDS = ("the quick brown fox jumps over a lazy dog while seven curious owls watch from an old oak tree "
         "near the quiet river bank where children often play games in the warm summer evening light and "
         "their parents sit on wooden benches talking about the weather the harvest the town fair and the "
         "new bridge that the council promised to build before the winter rains arrive this year").split()


def rec(rid, user, answer="ok", source="s"):
    return Record(rid, source, ({"role": "user", "content": user}, {"role": "assistant", "content": answer}))


def jaccard(a: Record, b: Record, n=5) -> float:
    x, y = shingles(conversation_text(a.messages), n), shingles(conversation_text(b.messages), n)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def planted():
    base = " ".join(WORDS)
    one_word = " ".join(w if i != 40 else "purple" for i, w in enumerate(WORDS))  # 5 of ~80 shingles differ
    recs = [
        rec("a", base),
        rec("b", "Write a haiku about autumn leaves falling on a mountain path at dusk."),
        rec("a-exact", base),  # another id, same conversation
        rec("a-case", base.upper().replace(" ", "  ") + "!!"),  # case, spacing, punctuation only
        rec("a-1word", one_word),
        rec("c", "Compute 17 times 23 and explain each step of the multiplication carefully."),
        rec("c-other-answer", "Compute 17 times 23 and explain each step of the multiplication carefully.",
            answer="391 because 17*20=340 and 17*3=51, 340+51=391, so the product is 391 in total."),
        rec("half", " ".join(WORDS[:40]) + " " + " ".join(reversed(WORDS[40:]))),  # shares about half
    ]
    return recs


def test_planted_near_duplicates(planted, tmp_path):
    write_jsonl(planted, tmp_path / "pool.jsonl")
    cfg = DedupConfig(pool=str(tmp_path / "pool.jsonl"), out=str(tmp_path / "dedup.jsonl"), threshold=0.8,
                      shard_rows=3, max_actors=1, num_cpus=2)
    summary = run_dedup(cfg)
    by_id = {r.id: r for r in planted}
    dups = {d["id"]: d for d in map(json.loads, (tmp_path / "dedup.jsonl.duplicates.jsonl").read_text().splitlines())}
    assert set(dups) == {"a-exact", "a-case", "a-1word"}
    assert all(d["duplicate_of"] == "a" for d in dups.values())  # the first occurrence is kept
    assert dups["a-exact"]["jaccard"] == 1.0 and dups["a-case"]["jaccard"] == 1.0
    true = jaccard(by_id["a"], by_id["a-1word"])
    assert 0.8 < true < 1 and dups["a-1word"]["jaccard"] == pytest.approx(true, abs=0.12)
    assert jaccard(by_id["a"], by_id["half"]) < 0.6 and jaccard(by_id["c"], by_id["c-other-answer"]) < 0.6
    kept = [r.id for r in read_records(tmp_path / "dedup.jsonl").records]
    assert kept == ["a", "b", "c", "c-other-answer", "half"]  # distinct texts kept, pool order
    assert read_records(tmp_path / "dedup.jsonl").records[0] == by_id["a"]  # records unchanged
    assert (summary["records"], summary["kept"], summary["duplicates"]) == (8, 5, 3)
    # deterministic: a rerun from the command line (signatures reused) gives the same files
    from less_ray.cli import main
    first = (tmp_path / "dedup.jsonl.duplicates.jsonl").read_text()
    assert main(["dedup", "--pool", cfg.pool, "--out", cfg.out, "--threshold", "0.8"]) == 0
    assert (tmp_path / "dedup.jsonl.duplicates.jsonl").read_text() == first


def _plant(pool):
    """Every 10th record gets a later copy: re-cased (Jaccard 1) or with one word appended (< 1)."""
    copies = []
    for i, r in enumerate(pool[::10]):
        msgs = [dict(m) for m in r.messages]
        if i % 2:
            msgs[0]["content"] = msgs[0]["content"].upper()
        else:
            msgs[-1]["content"] += " indeed"
        copies.append(Record(f"copy-{r.id}", r.source, tuple(msgs)))
    return list(pool) + copies[::-1]


def test_demo_pool_against_brute_force(tmp_path):
    """The demo pool with planted copies; every decision checked against exact pairwise Jaccard."""
    pool = _plant(generate_pool(200, seed=3))
    write_jsonl(pool, tmp_path / "pool.jsonl")
    thr = 0.7
    s = run_dedup(DedupConfig(pool=str(tmp_path / "pool.jsonl"), out=str(tmp_path / "d.jsonl"), threshold=thr,
                              ngram=3, shard_rows=64, max_actors=2, num_cpus=2))
    by_id = {r.id: r for r in pool}
    dups = [json.loads(x) for x in (tmp_path / "d.jsonl.duplicates.jsonl").read_text().splitlines()]
    kept = [r.id for r in read_records(tmp_path / "d.jsonl").records]
    assert s["kept"] == len(kept) and s["duplicates"] == len(dups) and len(kept) + len(dups) == len(pool)
    planted = {r.id for r in pool if r.id.startswith("copy-")}
    assert planted <= {d["id"] for d in dups}  # every planted copy found ...
    assert all(d["duplicate_of"] == d["id"][5:] for d in dups if d["id"] in planted)  # ... as a copy of its original
    order = {r.id: i for i, r in enumerate(pool)}
    for d in dups:  # each names an earlier kept record it truly resembles
        assert d["duplicate_of"] in kept and order[d["duplicate_of"]] < order[d["id"]]
        assert jaccard(by_id[d["id"]], by_id[d["duplicate_of"]], 3) >= thr - 0.15
    shingle = {i: shingles(conversation_text(by_id[i].messages), 3) for i in kept}
    close = [(a, b) for a, b in itertools.combinations(kept, 2)
             if len(shingle[a] & shingle[b]) / len(shingle[a] | shingle[b]) >= 0.95]
    assert close == []  # no clear near-duplicate pair survives
