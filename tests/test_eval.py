"""Evaluation: prompts as LESS evaluates, metrics, batched scoring equal to one-at-a-time."""
import json

import pytest
import torch

from less_ray.eval.metrics import bbh_extract, f1, max_f1, normalize_answer
from less_ray.eval.prompts import EvalItem, bbh_items, mmlu_items, tydiqa_items
from less_ray.eval.runner import EvalConfig, choose, generate, load_for_eval, render, run_eval


def test_metrics():
    assert bbh_extract("Let's think.\nA is 3. So the answer is (B).\nmore") == "(B)"
    assert bbh_extract("x So the answer is valid.") == "valid"
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert max_f1("Paris", ["paris", "London"]) == 1.0 and f1("x", "y") == 0.0


def test_eval_sets_are_disjoint_from_targets(root):
    from less_ray.data.targets import build_bbh, build_tydiqa
    bbh = bbh_items(root, max_per_task=None)
    assert len({i.subtask for i in bbh}) == 27
    target_qs = {r.messages[0]["content"].rsplit("\n\n", 1)[1].removeprefix("Q: ").removesuffix("\nA:")
                 for r in build_bbh(root)}
    assert not any(i.prompt.rsplit("\n\nQ: ", 1)[1] in target_qs for i in bbh)
    assert len(mmlu_items(root)) == 14042  # test split; the targets are dev rows
    ty = tydiqa_items(root, max_per_language=None)
    assert not {r.id for r in build_tydiqa(root)} & {i.id for i in ty}
    assert len({i.subtask for i in ty}) == 9 and len(ty) == 5077 - 6  # 6 targets drawn from dev, held out


def test_batched_choice_equals_one_at_a_time(tiny_model_dir):
    model, tok = load_for_eval(str(tiny_model_dir), None, "float32")
    items = [EvalItem("t", "s", str(i), "Q " + "word " * i + "?", "The answer is:", ["A"]) for i in range(1, 6)]
    cfg = EvalConfig(model=str(tiny_model_dir), batch_size=3)
    batched = choose(items, model, tok, cfg)
    ids = [tok.encode(" " + c, add_special_tokens=False)[-1] for c in "ABCD"]
    single = []
    with torch.no_grad():
        for it in items:
            x = tok(render(it, tok, "tulu"), return_tensors="pt")
            single.append("ABCD"[model(**x).logits[0, -1, ids].argmax().item()])
    assert batched == single
    gens = generate(items, model, tok, cfg, max_new_tokens=5, stop=["\n"])
    with torch.no_grad():
        x = tok(render(items[-1], tok, "tulu"), return_tensors="pt")
        g = model.generate(**x, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert gens[-1] == tok.decode(g[0, x["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]


def test_run_eval_writes_results(tiny_model_dir, tmp_path, root):
    out = tmp_path / "eval.json"
    res = run_eval(EvalConfig(model=str(tiny_model_dir), tasks=["mmlu", "bbh", "tydiqa", "demo:arithmetic"],
                              out=str(out), mmlu_max_per_subject=1, bbh_max_per_task=1, bbh_max_new_tokens=4,
                              tydiqa_max_per_language=1, tydiqa_max_new_tokens=4, demo_n=4, batch_size=16,
                              max_prompt_tokens=256))
    saved = json.loads(out.read_text())
    assert saved == res
    assert {t: saved["tasks"][t]["n"] for t in saved["tasks"]} == {"mmlu": 57, "bbh": 27, "tydiqa": 9,
                                                                   "demo:arithmetic": 4}
    assert all(0 <= v["score"] <= 1 for v in saved["tasks"].values())


def test_less_format_uses_less_eval_prompts_for_the_benchmarks():
    """Under chat_format less, BBH and MMLU prompts are LESS's plain-text ones and TydiQA's its
    tulu chat; a demo task keeps the tulu chat the demo model was trained on."""
    from less_ray.eval.prompts import EvalItem
    from less_ray.eval.runner import render
    bbh = EvalItem("bbh", "t", "i", "Task.\n\nQ: 2+2?", "A:", ["4"])
    assert render(bbh, None, "less") == "Task.\n\nQ: 2+2?\nA:"  # LESS's bbh eval: prompt + "\nA:"
    tydi = EvalItem("tydiqa", "english", "j", "Passage: p\nQuestion: q", "Answer:", ["x"])
    assert render(tydi, None, "less") == "<|user|>\nPassage: p\nQuestion: q\n<|assistant|>\nAnswer:"
    demo = EvalItem("demo:arithmetic", "add", "k", "What is 2 + 2?", "", ["4"])
    assert render(demo, None, "less") == "<|user|>\nWhat is 2 + 2?\n<|assistant|>\n"
    assert render(bbh, None, "tulu_stripped") == "<|user|>\nTask.\n\nQ: 2+2?\n<|assistant|>\nA:"


def test_answer_loss_per_example_equals_one_at_a_time(tiny_model_dir, tmp_path):
    """`loss:<task>` reports every example's answer-token loss by id (for paired comparisons), each
    equal to the loss of that example alone, unpadded; the mean is theirs."""
    from less_ray.core.formatting import FormatConfig, tokenize_messages
    from less_ray.data.demo import generate_pool
    from less_ray.data.io import write_jsonl
    from less_ray.eval.runner import EvalConfig, run_eval
    from less_ray.models import load_model_and_tokenizer
    recs = generate_pool(12, seed=3)
    write_jsonl(recs, tmp_path / "held.jsonl")
    res = run_eval(EvalConfig(model=str(tiny_model_dir), tasks=["loss:x"], heldout={"x": str(tmp_path / "held.jsonl")},
                              out=str(tmp_path / "e.json"), batch_size=5))["tasks"]["loss:x"]
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    want = {}
    for r in recs:
        ex = tokenize_messages(r.messages, tok, FormatConfig("less", 2048), example_id=r.id)
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        keep = labels[0, 1:] != -100
        want[r.id] = float(torch.nn.functional.cross_entropy(logits[keep], labels[0, 1:][keep]))
    assert set(res["per_example"]) == set(want) and res["n"] == len(want)
    for i, v in want.items():
        assert abs(res["per_example"][i] - v) < 1e-4, i
    assert abs(res["score"] - sum(want.values()) / len(want)) < 1e-5
