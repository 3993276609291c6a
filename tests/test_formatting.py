"""tulu_stripped / chat-template rendering and label masks, checked token by token (chat_format
less, the default, is pinned against LESS's code in test_exactly_less.py)."""
import math

import pytest
import torch

from less_ray.core.formatting import (IGNORE_INDEX, FormatConfig, SkippedExample, TokenizedExample,
                                      collate, render_tulu, token_budget_batches, tokenize_messages,
                                      tokenize_records)
from less_ray.data.demo import generate_pool
from less_ray.data.schema import make_record

STRIPPED = FormatConfig("tulu_stripped")
MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
         {"role": "assistant", "content": "2 + 3 = 5. So the answer is 5."},
         {"role": "user", "content": "  And 4 + 4?  "}, {"role": "assistant", "content": " 4 + 4 = 8.\n"}]


def _runs(ex: TokenizedExample) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token-id lists."""
    runs, cur = [], []
    for tok, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            assert lab == tok  # labels are the input ids themselves (the model shifts them)
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


def less_reference_labels(messages, tokenizer, max_len):
    """Independent reference for tulu_stripped in LESS's style: boundaries from tokenising text
    prefixes (open-instruct's encode_with_messages_format), here bounding assistant content + eos
    of the stripped text."""
    def concat(msgs):
        out = ""
        for m in msgs:
            body = m["content"].strip() + (tokenizer.eos_token if m["role"] == "assistant" else "")
            out += f"<|{m['role']}|>\n{body}\n"
        return out

    def n_tokens(text):
        return len(tokenizer(text, max_length=max_len, truncation=True)["input_ids"])

    full = concat(messages).strip()
    ids = tokenizer(full, max_length=max_len, truncation=True)["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = n_tokens(concat(messages[:i]) + "<|assistant|>\n")
            end = n_tokens(concat(messages[: i + 1]).rstrip("\n"))
            labels[start:end] = ids[start:end]
    return ids, labels


def test_tulu_stripped_text():
    text, spans = render_tulu(MULTI, "</s>")
    assert text == ("<|system|>\nBe brief.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n"
                    "2 + 3 = 5. So the answer is 5.</s>\n<|user|>\nAnd 4 + 4?\n<|assistant|>\n4 + 4 = 8.</s>")
    assert [text[a:b] for a, b in spans] == ["2 + 3 = 5. So the answer is 5.</s>", "4 + 4 = 8.</s>"]


def test_labels_cover_exactly_assistant_content_and_eos(tiny_tokenizer):
    tok = tiny_tokenizer
    ex = tokenize_messages(MULTI, tok, STRIPPED)
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
    assert [tok.decode(r) for r in _runs(ex)] == ["2 + 3 = 5. So the answer is 5.</s>", "4 + 4 = 8.</s>"]
    # every unlabelled token is prompt text: decoding them gives the rest of the conversation
    rest = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX],
                      skip_special_tokens=True)
    assert rest == "<|system|>\nBe brief.\n<|user|>\nWhat is 2 + 3?\n<|assistant|>\n\n<|user|>\nAnd 4 + 4?\n<|assistant|>\n"


def test_labels_match_less_style_reference_on_the_demo_pool(tiny_tokenizer):
    pool = generate_pool(300, seed=3)
    assert any(len(r.messages) > 3 for r in pool) and any(r.messages[0]["role"] == "system" for r in pool)
    for max_len in (2048, 24):
        for r in pool:
            ours = tokenize_messages(r.messages, tiny_tokenizer, FormatConfig("tulu_stripped", max_len))
            ids, labels = less_reference_labels(r.messages, tiny_tokenizer, max_len)
            if all(x == IGNORE_INDEX for x in labels):
                assert isinstance(ours, SkippedExample), r.id
                continue
            assert (ours.input_ids, ours.labels) == (ids, labels), r.id


def test_truncation_keeps_partial_answers_and_skips_empty_ones(tiny_tokenizer):
    full = tokenize_messages(MULTI, tiny_tokenizer, STRIPPED)
    first_label = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
    part = tokenize_messages(MULTI, tiny_tokenizer, FormatConfig("tulu_stripped", first_label + 2))
    assert part.truncated and len(part.input_ids) == first_label + 2 and part.n_label_tokens == 2
    gone = tokenize_messages(MULTI, tiny_tokenizer, FormatConfig("tulu_stripped", first_label), example_id="x")
    assert isinstance(gone, SkippedExample) and gone.id == "x" and "truncated away" in gone.reason


def test_tokenize_records_reports_every_skip(tiny_tokenizer):
    long_prompt = make_record("s", [{"role": "user", "content": "word " * 200},
                                    {"role": "assistant", "content": "yes"}], id="long")
    short = make_record("s", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], id="ok")
    kept, skipped = tokenize_records([long_prompt, short], tiny_tokenizer, FormatConfig(max_seq_length=64))
    assert [k.id for k in kept] == ["ok"] and [s.id for s in skipped] == ["long"]


def test_collate_pads_without_leaking_and_loss_is_finite(tiny_model_dir, tiny_tokenizer):
    from less_ray.models import load_model_and_tokenizer
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    exs = [tokenize_messages(r.messages, tok, FormatConfig()) for r in generate_pool(6, seed=1)]
    batch = collate(exs, tok.pad_token_id)
    width = max(len(e.input_ids) for e in exs)
    assert batch["input_ids"].shape == (6, width)
    for i, e in enumerate(exs):
        n = len(e.input_ids)
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][i, n:].eq(IGNORE_INDEX).all()
        assert batch["input_ids"][i, :n].tolist() == e.input_ids
    with torch.no_grad():
        loss = model(**batch).loss
    assert math.isfinite(loss.item())


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir):
    from less_ray.models import load_tokenizer
    return load_tokenizer(smollm2_dir)


def test_token_budget_batches():
    lengths = [10, 20, 30, 30, 50, 120, 300]
    # rows only
    assert token_budget_batches(lengths, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    # and padded tokens: rows x longest row <= 100; the 120- and 300-token examples alone
    got = token_budget_batches(lengths, 3, 100)
    assert got == [[0, 1, 2], [3, 4], [5], [6]]
    assert all(len(b) * max(lengths[i] for i in b) <= 100 for b in got if len(b) > 1)
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))  # every example once, in order
    # any order: the budget counts the longest row so far
    assert token_budget_batches([50, 10, 10], 8, 120) == [[0, 1], [2]]
    assert token_budget_batches([], 4, 10) == []
    with pytest.raises(ValueError):
        token_budget_batches(lengths, 0)


def test_real_tokenizer_tulu_and_template(smollm2_tokenizer):
    tok = smollm2_tokenizer
    tulu = tokenize_messages(MULTI, tok, FormatConfig("tulu"))  # the old name: an alias of tulu_stripped
    assert tulu == tokenize_messages(MULTI, tok, STRIPPED)
    assert [tok.decode(r) for r in _runs(tulu)] == ["2 + 3 = 5. So the answer is 5.<|im_end|>",
                                                    "4 + 4 = 8.<|im_end|>"]
    ids, labels = less_reference_labels(MULTI, tok, 2048)
    assert (tulu.input_ids, tulu.labels) == (ids, labels)
    tmpl = tokenize_messages(MULTI, tok, FormatConfig("template"))
    text = tok.decode(tmpl.input_ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    # the template keeps content as given (no strip); labels are content + end-of-turn
    assert [tok.decode(r) for r in _runs(tmpl)] == ["2 + 3 = 5. So the answer is 5.<|im_end|>",
                                                    " 4 + 4 = 8.\n<|im_end|>"]


def test_format_names_and_aliases(tiny_tokenizer):
    from less_ray.core.formatting import canonical_format
    assert [canonical_format(n) for n in ("less", "tulu", "tulu_stripped", "template")] == \
        ["less", "tulu_stripped", "tulu_stripped", "template"]
    with pytest.raises(ValueError, match="unknown chat_format 'llama2'; expected one of less, tulu_stripped, template"):
        tokenize_messages(MULTI, tiny_tokenizer, FormatConfig("llama2"))


def test_cue_is_unlabelled_in_every_format(tiny_tokenizer, smollm2_tokenizer):
    from less_ray.data.schema import validation
    msgs = validation("Q: What is 2 + 2?", "A:", " 4")
    text, spans = render_tulu(msgs, "</s>")  # tulu_stripped: the cue opens the assistant turn, eos labelled
    assert text == "<|user|>\nQ: What is 2 + 2?\n<|assistant|>\nA: 4</s>"
    assert [text[a:b] for a, b in spans] == [" 4</s>"]
    ex = tokenize_messages(msgs, tiny_tokenizer, STRIPPED)
    assert [tiny_tokenizer.decode(r).strip() for r in _runs(ex)] == ["4</s>"]
    tmpl = tokenize_messages(msgs, smollm2_tokenizer, FormatConfig("template"))
    assert "<|im_start|>assistant\nA: 4<|im_end|>" in smollm2_tokenizer.decode(tmpl.input_ids)
    assert [smollm2_tokenizer.decode(r) for r in _runs(tmpl)] == [" 4<|im_end|>"]


def _partitions(items):
    if not items:
        yield []
        return
    head, rest = items[0], items[1:]
    for part in _partitions(rest):
        yield [[head]] + part
        for i in range(len(part)):
            yield part[:i] + [[head] + part[i]] + part[i + 1:]


@pytest.mark.parametrize("seed", range(6))
def test_length_groups_is_the_cheapest_partition(seed):
    """Against brute force over every partition of the rows (not only contiguous ones)."""
    import random

    from less_ray.core.formatting import length_groups
    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 7))]
    overhead = rng.choice([0, 16, 64, 500])

    def cost(groups):
        return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)

    groups = length_groups(lengths, overhead)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert cost(groups) == min(cost(p) for p in _partitions(list(range(len(lengths)))))
    assert length_groups([], 64) == [] and length_groups([7, 7, 7], 0) == [[0, 1, 2]]
