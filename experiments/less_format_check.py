"""How many real pool records render and tokenise exactly as LESS's code does (chat_format less).

A seeded sample of the candidate pool (../shared/data through less_ray.data.sources' adapters,
the same number per source), SmolLM2's tokenizer. For every record it compares
- the text: ours (core.formatting.render_less) against LESS's `concat_messages`, re-written
  below from LESS's get_training_dataset.py (not calling ours), byte for byte;
- the tokens: our (input_ids, labels) against LESS's `encode_with_messages_format`, re-written
  below, at max_seq_length 2048 (and a short 256 to exercise truncation);
- and, for contrast, our previous default (tulu_stripped) against the same LESS labels.
Every record that differs is listed with the reason.

    python experiments/less_format_check.py --tokenizer /tmp/smollm2 --n 200 --seed 0
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

IGNORE = -100


def less_concat(messages, eos: str) -> str:
    """LESS's concat_messages: role tag line, stripped content (+ eos for the assistant), newline."""
    text = ""
    for m in messages:
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(m["role"])
        text += "<|" + m["role"] + "|>\n" + m["content"].strip() + (eos if m["role"] == "assistant" else "") + "\n"
    return text


def less_encode(messages, tok, max_len: int) -> tuple[list[int], list[int]]:
    """LESS's encode_with_messages_format: mask each non-assistant message and the assistant tag
    after it, by lengths of tokenised (truncated) text prefixes."""
    def ids(text):
        return tok(text, max_length=max_len, truncation=True)["input_ids"]

    input_ids = ids(less_concat(messages, tok.eos_token))
    labels = list(input_ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        lo = 0 if i == 0 else len(ids(less_concat(messages[:i], tok.eos_token)))
        upto = less_concat(messages[:i + 1], tok.eos_token)
        if i + 1 < len(messages) and messages[i + 1]["role"] == "assistant":
            upto += "<|assistant|>\n"
        hi = len(ids(upto))
        labels[lo:hi] = [IGNORE] * len(labels[lo:hi])
        if hi >= max_len:
            break
    return input_ids, labels


def sample(root: Path, n: int, seed: int):
    from less_ray.data.sources import CANDIDATE_SOURCES
    per = {name: load(root).records for name, load in CANDIDATE_SOURCES.items()}
    k, extra = divmod(n, len(per))
    rng = random.Random(seed)
    out = []
    for j, (name, recs) in enumerate(per.items()):
        out += rng.sample(recs, min(len(recs), k + (j < extra)))
    return out, {name: len(recs) for name, recs in per.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", help="a SmolLM2 folder (default: materialise one, ~45 s)")
    ap.add_argument("--data-root")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from less_ray.core.formatting import FormatConfig, SkippedExample, render_less, render_tulu, tokenize_messages
    from less_ray.data.sources import default_data_root
    tok_dir = args.tokenizer
    if not tok_dir:
        from less_ray.cli import main as cli
        tok_dir = tempfile.mkdtemp(prefix="smollm2_")
        assert cli(["model", "smollm2", tok_dir]) == 0
    tok = AutoTokenizer.from_pretrained(tok_dir)
    root = Path(args.data_root) if args.data_root else default_data_root()
    recs, sizes = sample(root, args.n, args.seed)
    print(f"tokenizer {tok_dir} ({type(tok).__name__}, eos {tok.eos_token!r}); data {root}")
    print(f"sample: {len(recs)} records, seed {args.seed}, from pools of {sizes}")
    by_source = Counter(r.source for r in recs)
    print("per source:", dict(sorted(by_source.items())))
    shapes = Counter(("system+" if r.messages[0]["role"] == "system" else "")
                     + f"{sum(m['role'] == 'assistant' for m in r.messages)}-turn" for r in recs)
    print("shapes:", dict(sorted(shapes.items())))

    text_same, exceptions = 0, defaultdict(list)
    tok_same = {2048: 0, 256: 0}
    nan = {2048: 0, 256: 0}  # LESS: all labels -100 (loss 0/0 = NaN); ours: skipped and reported
    old_same = 0
    for r in recs:
        ours_text = render_less(r.messages, tok.eos_token)[0]
        if ours_text.encode("utf-8") == less_concat(r.messages, tok.eos_token).encode("utf-8"):
            text_same += 1
        else:
            exceptions["text"].append(r.id)
        for max_len in tok_same:
            ours = tokenize_messages(r.messages, tok, FormatConfig("less", max_len), r.id)
            ids, labels = less_encode(r.messages, tok, max_len)
            if isinstance(ours, SkippedExample):
                # LESS keeps such a row; every label -100 (its loss is 0/0 = NaN): the one policy difference
                if set(labels) == {IGNORE}:
                    nan[max_len] += 1
                    exceptions[f"skipped_at_{max_len} (LESS: all -100, NaN loss)"].append(r.id)
                else:
                    exceptions[f"tokens_{max_len}"].append(r.id)
            elif (ours.input_ids, ours.labels) == (ids, labels):
                tok_same[max_len] += 1
            else:
                exceptions[f"tokens_{max_len}"].append(r.id)
        old = tokenize_messages(r.messages, tok, FormatConfig("tulu_stripped", 2048), r.id)
        ids, labels = less_encode(r.messages, tok, 2048)
        if not isinstance(old, SkippedExample) and (old.input_ids, old.labels) == (ids, labels):
            old_same += 1
            why = "truncated inside the first answer" if old.truncated else "?"
            exceptions[f"tulu_stripped equal to LESS ({why})"].append(r.id)
        old_text = render_tulu(r.messages, tok.eos_token)[0]
        if old_text == less_concat(r.messages, tok.eos_token):
            exceptions["tulu_stripped text equal (unexpected)"].append(r.id)

    n = len(recs)
    print(f"text byte-identical to LESS's concat_messages: {text_same}/{n}")
    for max_len in tok_same:
        print(f"max_seq_length {max_len}: (input_ids, labels) identical to LESS's encode_with_messages_format: "
              f"{tok_same[max_len]}/{n}; no label left (LESS: all -100, NaN loss; ours: skipped, reported): "
              f"{nan[max_len]}/{n}; other differences: {n - tok_same[max_len] - nan[max_len]}")
    print(f"previous default tulu_stripped identical to LESS: {old_same}/{n}")
    for what, ids in exceptions.items():
        print(f"  {what}: {len(ids)}: {ids[:20]}{' ...' if len(ids) > 20 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
