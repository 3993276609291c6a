"""`less-ray eval`: batched evaluation of a model (or LoRA adapter) on BBH, MMLU, TydiQA, demo.

Pure torch + transformers: the pipeline places it on a GPU worker; alone it runs anywhere.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import save_config, path_field
from ..core.formatting import ChatFormat
from .metrics import bbh_extract, exact_match, max_f1
from .prompts import EvalItem, bbh_items, mmlu_items, tydiqa_items

log = logging.getLogger("less_ray")
LESS_EVAL_TASKS = ("bbh", "mmlu", "tydiqa")  # benchmarks whose prompts LESS's own eval scripts build


@dataclass
class EvalConfig:
    model: str = path_field("model", "")  # HF folder, or a peft adapter folder (its base is read from adapter_config.json)
    base_model: str | None = path_field("model", None)  # overrides the adapter's recorded base
    # bbh, mmlu, tydiqa, demo:<family>, or loss:<name> (mean answer-token loss on the examples of
    # heldout[<name>], or of the file <name>)
    tasks: list[str] = field(default_factory=lambda: ["bbh", "mmlu", "tydiqa"])
    heldout: dict[str, str] = path_field("in", {})
    out: str = path_field("out", "")  # results JSON
    data_root: str | None = path_field("in", None)
    chat_format: ChatFormat = "less"  # less | tulu_stripped: the tulu chat; template: the tokenizer's own
    batch_size: int = 8
    max_prompt_tokens: int = 2048  # longer prompts keep their end
    bbh_max_per_task: int | None = 40  # LESS evaluates 40 per BBH task
    bbh_max_new_tokens: int = 512
    mmlu_max_per_subject: int | None = None
    tydiqa_max_per_language: int | None = 200
    tydiqa_max_new_tokens: int = 50
    demo_n: int = 100
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU


def load_for_eval(model_path: str, base_model: str | None, dtype: str):
    from ..models import load_model_and_tokenizer
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    adapter_cfg = Path(model_path) / "adapter_config.json"
    if adapter_cfg.exists():
        from peft import PeftModel
        base = base_model or json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
        model, tok = load_model_and_tokenizer(base, dtype)
        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    else:
        model, tok = load_model_and_tokenizer(model_path, dtype)
    tok.padding_side = "left"  # generation continues from the prompt's end
    return model.to(device).eval(), tok


def render(item: EvalItem, tok, chat_format: str) -> str:
    if chat_format == "less" and item.task in LESS_EVAL_TASKS:  # LESS's eval scripts' exact prompt strings
        return item.less_text()
    if chat_format != "template":  # the tulu chat (also demo tasks under less)
        return f"<|user|>\n{item.prompt.rstrip()}\n<|assistant|>\n{item.cue}"
    text = tok.apply_chat_template([{"role": "user", "content": item.prompt.rstrip()}], tokenize=False,
                                   add_generation_prompt=True)
    return text + item.cue


def _encode(texts: list[str], tok, max_tokens: int, chat_format: str) -> dict[str, torch.Tensor]:
    rows = [tok(t, add_special_tokens=chat_format != "template")["input_ids"][-max_tokens:] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):  # left padding
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def choose(items: list[EvalItem], model, tok, cfg: EvalConfig, choices: str = "ABCD") -> list[str]:
    """Multiple choice by the next-token logits of ' A', ' B', ... (open-instruct's MMLU)."""
    ids = [tok.encode(" " + c, add_special_tokens=False)[-1] for c in choices]
    out = []
    for lo in range(0, len(items), cfg.batch_size):
        batch = _encode([render(i, tok, cfg.chat_format) for i in items[lo:lo + cfg.batch_size]], tok,
                        cfg.max_prompt_tokens, cfg.chat_format)
        logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits[:, -1, ids]
        out += [choices[j] for j in logits.argmax(-1).tolist()]
    return out


@torch.no_grad()
def generate(items: list[EvalItem], model, tok, cfg: EvalConfig, max_new_tokens: int, stop: list[str]) -> list[str]:
    out = []
    for lo in range(0, len(items), cfg.batch_size):
        batch = _encode([render(i, tok, cfg.chat_format) for i in items[lo:lo + cfg.batch_size]], tok,
                        cfg.max_prompt_tokens, cfg.chat_format)
        # stop_strings ends the batch once every row has hit a stop (the cut below stays exact)
        gen = model.generate(**{k: v.to(model.device) for k, v in batch.items()}, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             stop_strings=stop, tokenizer=tok)
        for row in gen[:, batch["input_ids"].shape[1]:]:
            text = tok.decode(row, skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0]
            out.append(text)
    return out


def _summarise(items: list[EvalItem], scores: list[float], preds: list[str]) -> dict[str, Any]:
    per: dict[str, list[float]] = {}
    for it, s in zip(items, scores):
        per.setdefault(it.subtask, []).append(s)
    return {"score": sum(scores) / max(1, len(scores)), "n": len(scores),
            "per_subtask": {k: sum(v) / len(v) for k, v in sorted(per.items())},
            "examples": [{"id": i.id, "prediction": p, "gold": i.gold} for i, p in list(zip(items, preds))[:5]]}


def evaluate_task(task: str, model, tok, cfg: EvalConfig, data_root: Path | None) -> dict[str, Any]:
    if task == "mmlu":
        items = mmlu_items(data_root, max_per_subject=cfg.mmlu_max_per_subject)
        preds = choose(items, model, tok, cfg)
        return {"metric": "accuracy", **_summarise(items, [exact_match(p, i.gold[0]) for p, i in zip(preds, items)], preds)}
    if task == "bbh":
        items = bbh_items(data_root, cfg.bbh_max_per_task)
        gens = generate(items, model, tok, cfg, cfg.bbh_max_new_tokens, ["\n\n"])
        preds = [bbh_extract(g) for g in gens]
        return {"metric": "exact_match", **_summarise(items, [exact_match(p, i.gold[0]) for p, i in zip(preds, items)], preds)}
    if task == "tydiqa":
        items = tydiqa_items(data_root, seed=cfg.seed, max_per_language=cfg.tydiqa_max_per_language)
        preds = [g.strip() for g in generate(items, model, tok, cfg, cfg.tydiqa_max_new_tokens, ["\n"])]
        return {"metric": "f1", **_summarise(items, [max_f1(p, i.gold) for p, i in zip(preds, items)], preds)}
    if task.startswith("demo:"):
        from .demo_task import demo_correct, demo_items, demo_mean_loss
        items = demo_items(task.split(":", 1)[1], cfg.demo_n, cfg.seed)
        preds = [g.strip() for g in generate(items, model, tok, cfg, 48, ["\n"])]
        return {"metric": "accuracy", **_summarise(items, [demo_correct(p, i) for p, i in zip(preds, items)], preds),
                "answer_loss": demo_mean_loss(items, model, tok, cfg.chat_format, cfg.batch_size)}
    if task.startswith("loss:"):
        from ..data.io import read_records
        name = task.split(":", 1)[1]
        path = cfg.heldout.get(name, name)
        records = read_records(path).records
        loss = answer_loss(records, model, tok, cfg)
        return {"metric": "answer_loss", "score": loss["mean"], "n": loss["n"], "file": str(path),
                "per_subtask": loss["per_subtask"], "skipped": loss["skipped"], "lower_is_better": True,
                "per_example": loss["per_example"]}
    raise ValueError(f"unknown eval task {task!r}; expected bbh, mmlu, tydiqa, demo:<family> or loss:<name>")


@torch.no_grad()
def answer_loss(records, model, tok, cfg: EvalConfig) -> dict[str, Any]:
    """Mean over examples of each example's mean loss on its answer (label) tokens, formatted
    as training formats them: it moves with small updates, where accuracy often does not."""
    from ..core.formatting import FormatConfig, collate, tokenize_records
    kept, skipped = tokenize_records(records, tok, FormatConfig(cfg.chat_format, cfg.max_prompt_tokens))
    subtask = {r.id: r.subtask or r.task or "all" for r in records}
    per_example: list[tuple[str, float]] = []
    for lo in range(0, len(kept), cfg.batch_size):
        chunk = kept[lo:lo + cfg.batch_size]
        batch = {k: v.to(model.device) for k, v in collate(chunk, tok.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        tok_loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
        keep = labels != -100
        means = (tok_loss * keep).sum(1) / keep.sum(1)
        per_example += [(e.id, float(m)) for e, m in zip(chunk, means.tolist())]
    if not per_example:
        raise ValueError(f"loss eval: none of {len(records)} examples has answer tokens within "
                         f"{cfg.max_prompt_tokens} tokens")
    groups: dict[str, list[float]] = {}
    for i, v in per_example:
        groups.setdefault(subtask[i], []).append(v)
    # every example's loss by id too: paired comparisons of two models (a bootstrap over examples)
    return {"mean": sum(v for _, v in per_example) / len(per_example), "n": len(per_example),
            "per_subtask": {k: sum(v) / len(v) for k, v in sorted(groups.items())}, "skipped": len(skipped),
            "per_example": dict(per_example)}


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    if not cfg.model:
        raise ValueError("eval: 'model' is required")
    data_root = None
    if any(t in ("bbh", "mmlu", "tydiqa") for t in cfg.tasks):
        from ..data.sources import default_data_root
        data_root = Path(cfg.data_root) if cfg.data_root else default_data_root()
    model, tok = load_for_eval(cfg.model, cfg.base_model, cfg.dtype)
    results: dict[str, Any] = {"model": cfg.model, "tasks": {}}
    for task in cfg.tasks:
        t0 = time.time()
        results["tasks"][task] = evaluate_task(task, model, tok, cfg, data_root)
        results["tasks"][task]["seconds"] = round(time.time() - t0, 1)
        log.debug("eval %s: %s = %.4f (n=%d)", task, results["tasks"][task]["metric"],
                 results["tasks"][task]["score"], results["tasks"][task]["n"])
    if cfg.out:
        out = Path(cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        save_config(cfg, out.with_name(out.name + ".config.yaml"))
    return results
