"""MinHash near-duplicates: the `dedup` stage's (`selectors.minhash`) and the report's, one definition.

A record's text is its whole conversation ("role: content" per message, `conversation_text`),
lower-cased and split into word tokens (`\\w+`); its shingles are the word n-grams (`shingles`; a
text shorter than n words is one shingle). `signatures` gives `num_perm` MinHash values per text
(datasketch's affine32 scheme, seeded). `NearDuplicateIndex` walks signatures in order: an LSH
query (`threshold`) returns earlier KEPT records sharing a band; the record is a duplicate of the
one with the highest estimated Jaccard (ties: the earliest) when that estimate is >= `threshold`,
else it is kept and indexed. The bands favour recall (`recall_weight` 0.95: a pair at the
threshold becomes a candidate with probability ~0.95, at threshold + 0.06 ~0.997), since every
candidate is verified by its estimated Jaccard anyway. So the first occurrence is kept, the result
depends on order and seed only, and a dropped record always names a kept one.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

WORD = re.compile(r"\w+")
SCHEME = "affine32"


def conversation_text(messages: Sequence[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def shingles(text: str, n: int) -> set[bytes]:
    """Word n-grams of the lower-cased text (one shingle if it has fewer than n words)."""
    words = WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


def signatures(texts: Sequence[str], ngram: int, num_perm: int, seed: int) -> np.ndarray:
    """[len(texts), num_perm] uint32 MinHash values (one permutation set for all texts)."""
    from datasketch import MinHash
    if not texts:
        return np.zeros((0, num_perm), np.uint32)
    sigs = MinHash.bulk([shingles(t, ngram) for t in texts], num_perm=num_perm, seed=seed, scheme=SCHEME)
    return np.stack([m.hashvalues for m in sigs]).astype(np.uint32, copy=False)


class NearDuplicateIndex:
    """Keep-first near-duplicate detection over signatures given in pool order."""

    def __init__(self, threshold: float, num_perm: int, seed: int, recall_weight: float = 0.95):
        from datasketch import MinHashLSH
        if not 0 < threshold <= 1 or not 0 < recall_weight < 1:
            raise ValueError(f"threshold must be in (0, 1] and recall_weight in (0, 1), got {threshold}, {recall_weight}")
        self.threshold, self.num_perm, self.seed = threshold, num_perm, seed
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(1 - recall_weight, recall_weight))
        self.kept_sigs: list[np.ndarray] = []
        self.kept_ids: list[str] = []

    def add(self, rid: str, sig: np.ndarray) -> tuple[str, float] | None:
        """None if `rid` is kept (and indexed), else (the kept id it duplicates, estimated Jaccard)."""
        from datasketch import LeanMinHash
        m = LeanMinHash(seed=self.seed, hashvalues=sig, scheme=SCHEME)
        cands = sorted(self.lsh.query(m))
        if cands:
            est = np.array([np.mean(self.kept_sigs[c] == sig) for c in cands])
            best = int(np.argmax(est))  # first maximum: the earliest kept record among equals
            if est[best] >= self.threshold:
                return self.kept_ids[cands[best]], float(est[best])
        self.lsh.insert(len(self.kept_ids), m, check_duplication=False)
        self.kept_sigs.append(np.array(sig, np.uint32))
        self.kept_ids.append(rid)
        return None
