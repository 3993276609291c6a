"""How much padding extraction computes, with and without the length cut (not a test; no model run).

Real pool records (../shared/data, seeded sample, SmolLM2's tokenizer, Tulu format, max 512 tokens)
in shards of S rows, as the extractor batches them: each shard sorted by length, cut every 16
examples (`token_budget_batches`); then each batch cut again by `length_groups` (overhead 64, the CPU
default of core.grads). Prints real tokens, padded positions and the share that is padding.

    python bench/padding_waste.py > bench/results/padding_waste_cpu.txt
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default="/tmp/smollm2")
    ap.add_argument("--records", type=int, default=2000)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from less_ray.core.formatting import FormatConfig, length_groups, token_budget_batches, tokenize_messages
    from less_ray.data.sources import load_candidates
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    recs = list(load_candidates().records)
    random.Random(0).shuffle(recs)
    fmt = FormatConfig(max_seq_length=512)
    lengths = []
    for r in recs:
        t = tokenize_messages(r.messages, tok, fmt, example_id=r.id)
        if hasattr(t, "input_ids"):
            lengths.append(len(t.input_ids))
        if len(lengths) == args.records:
            break
    print(f"# {len(lengths)} real pool records (seed 0), tokens mean {sum(lengths) / len(lengths):.0f}, "
          f"max {max(lengths)}; batches of 16 per sorted shard, then the length cut (overhead 64)")
    print(f"{'shard rows':>10} {'tokens':>8} {'padded':>8} {'padding':>8} {'with cut':>9} {'padding':>8}")
    for shard in (32, 64, 250, 1000, 2000):
        real = padded = cut = 0
        for a in range(0, len(lengths) - shard + 1, shard):
            ls = sorted(lengths[a:a + shard])
            for b in token_budget_batches(ls, 16):
                bl = [ls[i] for i in b]
                real += sum(bl)
                padded += len(bl) * max(bl)
                cut += sum(len(g) * max(bl[i] for i in g) for g in length_groups(bl, 64))
        print(f"{shard:>10} {real:>8} {padded:>8} {100 * (1 - real / padded):>7.1f}% {cut:>9} "
              f"{100 * (1 - real / cut):>7.1f}%")


if __name__ == "__main__":
    main()
