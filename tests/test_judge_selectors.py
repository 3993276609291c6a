"""The LM judge and the judge-based selectors ALPAGASUS and DEITA: each piece against an
independent reference (unbatched autograd-free forwards, a one-at-a-time python walk, the
authors' parse rule), then both selectors end to end through the CLI on the demo pool."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from less_ray.selectors.alpagasus import UNRATED, AlpagasusScorer
from less_ray.selectors.deita import COMPLEXITY, QUALITY, SCALE, DeitaScorer, diversity_walk, walk_scores
from less_ray.selectors.judge import LMJudge, parse_rating, record_parts, turn_pairs

CONVERSATION = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6, since 3+3=6."}]




def test_parse_rating_is_alpagasus_parse_score():
    assert parse_rating("4.5\nThe response is accurate.") == 4.5
    assert parse_rating("  3 \nok") == 3.0
    assert parse_rating("The answer is fine. Score: 2\nmore") == 2.0  # chatgpt_rating.py's fallback
    assert parse_rating("I would give it a five") is None  # quarantined by the caller, never a made-up score


def test_record_parts_and_turn_pairs():
    assert record_parts(CONVERSATION) == ("What is 2+2?\n\nAnd 3+3?", "6, since 3+3=6.")
    assert turn_pairs(CONVERSATION) == [("What is 2+2?", "4"), ("And 3+3?", "6, since 3+3=6.")]
    with pytest.raises(ValueError, match="no assistant turn"):
        record_parts([{"role": "user", "content": "hi"}])


def _reference_expected(judge, prompt, values):
    """One prompt alone (no padding): softmax over the values' next-token logits, times the values."""
    ids = torch.tensor([judge.tok(prompt)["input_ids"]])
    with torch.inference_mode():
        logits = judge.lm(input_ids=ids).logits[0, -1].double()
    tids = judge.scale_token_ids(values)
    return float((torch.softmax(logits[tids], 0) * torch.tensor(values, dtype=torch.float64)).sum())


def test_expected_rating_matches_unbatched_forward(tiny_model_dir):
    judge = LMJudge(str(tiny_model_dir), batch_size=3)
    prompts = ["Rate this: 1 + 1 = 2\n##Quality: ", "short ", "a much longer prompt " * 9 + "##Complexity: ",
               "what is seven times six? forty-two.", "x"]
    got = judge.expected(prompts, SCALE)  # batched, left-padded, sorted by length
    want = [_reference_expected(judge, p, SCALE) for p in prompts]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert all(1 <= g <= 6 for g in got)


def test_deita_evol_score_sums_complexity_times_quality_over_turns(tiny_model_dir):
    scorer = DeitaScorer(["all"], *[{"model": str(tiny_model_dir), "batch_size": 2, "field_max_tokens": 512,
                                     "use_gpu": False}] * 2)
    rows = [{"id": "a", "messages": CONVERSATION}, {"id": "b", "messages": CONVERSATION[:2]}]
    evol = scorer.score(rows)["all"][0]
    judge = scorer.c
    want = [sum(_reference_expected(judge, COMPLEXITY.format(instruction=u), SCALE) *
                _reference_expected(judge, QUALITY.format(instruction=u, output=a), SCALE)
                for u, a in turn_pairs(r["messages"])) for r in rows]
    np.testing.assert_allclose(evol, want, rtol=1e-5)


def _walk_reference(x, order, threshold, budget):
    kept = []
    for i in order:
        if len(kept) >= budget:
            break
        if all(float(x[i] @ x[k]) <= threshold for k in kept):
            kept.append(int(i))
    return kept


def test_diversity_walk_is_the_one_at_a_time_walk():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 16))
    x = np.concatenate([base, base[:40] + 0.05 * rng.normal(size=(40, 16))])  # 40 near-duplicates
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(x))
    for threshold, budget in [(0.9, 1000), (0.9, 25), (0.3, 1000), (1.0, 50)]:
        want = _walk_reference(x, order, threshold, budget)
        for chunk in (1, 7, 256):
            assert diversity_walk(x, order, threshold, budget, chunk) == want
    kept = diversity_walk(x, order, 0.9, 1000)
    assert len(kept) <= 60 + 1  # each near-duplicate pair contributes one (cos ~ 0.999 > 0.9)


def test_walk_scores_order_is_the_walk_then_evol():
    order = np.array([3, 0, 4, 1, 2])  # evol ranking
    kept = [3, 4, 2]
    s = walk_scores(5, order, kept)
    assert list(np.argsort(-s, kind="stable")) == [3, 4, 2, 0, 1]


def test_alpagasus_scorer_parses_and_quarantines(tiny_model_dir, tmp_path, monkeypatch):
    scorer = AlpagasusScorer(["all"], {"model": str(tiny_model_dir), "batch_size": 2, "field_max_tokens": 64,
                                       "use_gpu": False}, "generate", 8, str(tmp_path))
    replies = ["4.5\nAccurate.", "Score: 3\n", "great answer", "7\nout of scale"]
    monkeypatch.setattr(scorer.judge, "generate", lambda prompts, n, add_special=True: replies[:len(prompts)])
    rows = [{"id": f"r{i}", "messages": CONVERSATION[:2]} for i in range(4)]
    ratings = scorer.score(rows)["all"][0]
    assert list(ratings[:2]) == [4.5, 3.0] and ratings[2] == UNRATED and ratings[3] == UNRATED
    written = [json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [w["rating"] for w in written] == [4.5, 3.0, None, None] and written[2]["reply"] == "great answer"


def _selected_ids(out, p=0.05):
    return [json.loads(line)["id"] for line in (Path(out) / "all" / f"top_p{p:g}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name,sets", [("alpagasus", ["reading=generate"]), ("alpagasus", ["reading=expected"]),
                                       ("deita", [])])
def test_judge_selectors_end_to_end(demo, tiny_model_dir, name, sets):
    from less_ray.cli import main
    from less_ray.data.io import read_records
    out = demo["root"] / f"{name}_{'_'.join(sets) or 'default'}"
    args = ["selector", name, "--pool", demo["pool"], "--targets", f"arith={demo['targets']}", "--out", str(out),
            "--top-p", "0.05", "--set", f"model={tiny_model_dir}", "--set", "max_actors=1", "--set", "num_cpus=2"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    pool_ids = {r.id for r in read_records(demo["pool"]).records}
    picked = _selected_ids(out)
    assert len(picked) == 10 == len(set(picked)) and set(picked) <= pool_ids
    summary = json.loads((out / "score_summary.json").read_text())
    scores = pq.read_table(out / "all" / "scores.parquet").column("score").to_numpy()
    assert len(scores) == 200 and np.isfinite(scores).all()
    if name == "alpagasus":
        assert summary["rated"] + summary["unrated"]["count"] == 200
        unrated = (out / "unrated.jsonl").read_text().splitlines()
        assert len(unrated) == summary["unrated"]["count"]
        if "reading=expected" in sets:
            assert summary["unrated"]["count"] == 0 and (scores >= 0).all() and (scores <= 5).all()
    else:
        assert summary["selected_by_walk"] == 10 and summary["budget"] == 10
        evol = pq.read_table(out / "evol" / "all" / "scores.parquet")
        ev = dict(zip(evol.column("id").to_pylist(), evol.column("score").to_numpy()))
        assert max(ev.values()) == ev[picked[0]]  # the walk starts at the best evol score


def test_judge_selectors_are_listed(capsys):
    from less_ray.cli import main
    assert main(["selector", "list"]) == 0
    listed = capsys.readouterr().out
    assert "alpagasus" in listed and "deita" in listed
    for name, knobs in [("alpagasus", ("threshold: float = 4.5", "reading: str = generate", "max_new_tokens")),
                        ("deita", ("threshold: float = 0.9", "complexity_model", "quality_model"))]:
        assert main(["config", f"selector:{name}"]) == 0
        shown = capsys.readouterr().out
        assert all(k in shown for k in knobs), shown


def test_answer_loss_is_token_weighted_and_independent_of_batching(tiny_model_dir):
    """The eval loss of the fine-tune helper: the token-weighted mean of HF's per-example losses,
    the same for any batch or token budget (a budget bounds the logits' memory)."""
    from less_ray.core.finetune import answer_loss, tokenized
    from less_ray.core.formatting import FormatConfig
    judge = LMJudge(str(tiny_model_dir))
    rows = [{"id": f"e{i}", "messages": [{"role": "user", "content": "q " * (i + 1)},
                                          {"role": "assistant", "content": "answer " * (3 * i + 1)}]} for i in range(5)]
    ex = tokenized(rows, judge.tok, FormatConfig("less", 128))
    total = n = 0
    for e in ex:  # HF's own mean loss per example, weighted by its answer tokens
        labels = torch.tensor([e.labels])
        k = int((labels[:, 1:] != -100).sum())
        with torch.inference_mode():
            total += judge.lm(input_ids=torch.tensor([e.input_ids]), labels=labels).loss.item() * k
        n += k
    for batch_size, max_tokens in [(8, 4096), (2, 4096), (8, 1)]:
        assert answer_loss(judge.lm, judge.tok, ex, batch_size, max_tokens) == pytest.approx(total / n, rel=1e-5)


def test_lora_finetune_token_budget_takes_hf_full_batch_steps(tiny_model_dir):
    """A token-budgeted fine-tune (micro-batches accumulated into one step) trains the same
    adapter as a plain loop over HF's own full-batch mean loss (`model(**batch).loss`)."""
    import copy

    from peft import LoraConfig, get_peft_model

    from less_ray.core.finetune import FinetuneRecipe, lora_finetune, tokenized
    from less_ray.core.formatting import FormatConfig, collate
    judge = LMJudge(str(tiny_model_dir))
    rows = [{"id": f"e{i}", "messages": [{"role": "user", "content": "q " * (2 * i + 1)},
                                          {"role": "assistant", "content": "answer " * (i % 3 + 1)}]} for i in range(6)]
    ex = tokenized(rows, judge.tok, FormatConfig("less", 128))
    recipe = FinetuneRecipe(epochs=2, lr=1e-2, batch_size=4, seed=3)
    # the reference: HF's mean loss on the whole batch, one backward per step, the same order and schedule
    torch.manual_seed(recipe.seed)
    ref = get_peft_model(copy.deepcopy(judge.lm), LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                                                           lora_dropout=0.0, target_modules=list(recipe.target_modules)))
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / 4))
    rng = np.random.default_rng(recipe.seed)
    ref.train()
    for _ in range(recipe.epochs):
        order = rng.permutation(len(ex))
        for lo in range(0, len(ex), recipe.batch_size):
            ref(**collate([ex[i] for i in order[lo:lo + recipe.batch_size]], judge.tok.pad_token_id)).loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    want = {k: v for k, v in ref.state_dict().items() if "lora_" in k}
    for max_tokens in (4096, 1):  # one micro-batch per step; one example per micro-batch
        got = lora_finetune(copy.deepcopy(judge.lm), judge.tok, ex, recipe, max_tokens=max_tokens).state_dict()
        assert want and all(torch.allclose(got[k], v, atol=1e-5) for k, v in want.items())
    assert not all(torch.allclose(v, torch.zeros_like(v)) for k, v in want.items() if "lora_B" in k)  # it trained
