"""Config mistakes are reported before Ray starts, each naming the key or file and the fix."""
import json
import sys
import time

import pytest
import yaml

from less_ray.cli import main


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from less_ray.data.demo import write_demo_data
    info = write_demo_data(tmp_path_factory.mktemp("demo_data"), n_pool=400, target_family="capitals", n_targets=10)
    return info["pool"]["path"], info["targets"]["path"]


def _config(tmp_path, tiny_model_dir, demo_files, **changes):
    pool, targets = demo_files
    cfg = {"out": str(tmp_path / "run"), "base_model": str(tiny_model_dir), "pool": pool,
           "targets": {"demo_capitals": targets}, "eval": {"tasks": {"demo_capitals": ["demo:capitals"]}},
           "warmup": {"scaling": {"effective_batch_size": 4}}, "train": {"scaling": {"effective_batch_size": 4}}}
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fails_before_ray(args, capsys) -> str:
    """Run the CLI; it must exit 1 within seconds, with Ray never imported into a session."""
    t0 = time.time()
    assert main(args) == 1
    assert time.time() - t0 < 20
    if "ray" in sys.modules:
        import ray
        assert not ray.is_initialized()
    return capsys.readouterr().err


@pytest.mark.parametrize("change, expected", [
    ({"warmup.lora": {"rank": 8}}, "warmup.lora.rank: unknown key (did you mean 'r'?)"),
    ({"stagez": ["warmup"]}, "stagez: unknown key (did you mean 'stages'?)"),
    ({"stages": ["warmup", "scroe"]}, "stages[1]: unknown stage 'scroe' (did you mean 'score'?)"),
    ({"base_model": None}, "base_model: required key is missing"),
    ({"targets": ["a.jsonl"]}, "targets: expected a mapping (dict[str, str]), got list ['a.jsonl']"),
    ({"stages": "warmup"}, "stages: expected a list (list[str]), got str 'warmup'"),
    ({"max_seq_length": "512"}, "max_seq_length: expected int, got str '512'"),
    ({"eval.tasks": {"demo_capitals": ["capitalz"]}}, "eval.tasks.demo_capitals: unknown eval task 'capitalz'"),
])
def test_config_mistakes_name_the_key(tmp_path, tiny_model_dir, demo_files, capsys, change, expected):
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files, **change))], capsys)
    assert expected in err


def test_stage_typo_and_missing_base_model_say_different_things(tmp_path, tiny_model_dir, demo_files, capsys):
    typo = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                      stages=["warmpu"]))], capsys)
    missing = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                         base_model=None))], capsys)
    assert "stages[0]: unknown stage 'warmpu' (did you mean 'warmup'?)" in typo and "base_model" not in typo
    assert "base_model: required key is missing" in missing and "stages" not in missing


def test_a_base_model_that_is_no_folder_is_refused_not_downloaded(tmp_path, tiny_model_dir, demo_files, capsys,
                                                                   monkeypatch):
    monkeypatch.delenv("LESS_RAY_ALLOW_HUB", raising=False)
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     base_model="HuggingFaceTB/SmolLM2-135M"))], capsys)
    assert "base_model:" in err and "does not exist" in err and "LESS_RAY_ALLOW_HUB=1" in err
    # relative: named with the absolute path it was resolved to
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     base_model="models/nope"))], capsys)
    assert "base_model:" in err and "/models/nope does not exist" in err


def test_missing_and_malformed_data_files_are_named_with_the_line(tmp_path, tiny_model_dir, demo_files, capsys):
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     pool=str(tmp_path / "nope.jsonl")))], capsys)
    assert f"pool: no such file or folder: {tmp_path / 'nope.jsonl'}" in err
    bad = tmp_path / "bad.jsonl"
    good = open(demo_files[0], encoding="utf-8").read().splitlines()[:3]
    bad.write_text("\n".join(good + ['{"messages": [{"role": "user"'] + good[:0]) + "\n")
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     pool=str(bad)))], capsys)
    assert f"{bad}:4:" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     targets={"t": str(empty)}))], capsys)
    assert f"targets.t: {empty}: no target examples: the file is empty (0 lines)" in err


def test_an_epoch_whose_mean_lr_is_zero_is_an_error_with_the_fix(tmp_path, tiny_model_dir, demo_files, capsys):
    # 400 x 5% = 20 warmup examples against LESS's effective batch 128: one step per epoch, the first at lr 0
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     **{"warmup.scaling": None}))], capsys)
    assert "warmup: epoch(s) [1] would have mean learning rate 0" in err
    assert "lower warmup.scaling.effective_batch_size (now 128)" in err


def test_size_warnings_name_the_setting(tmp_path, tiny_model_dir, demo_files):
    from less_ray.config import load_config
    from less_ray.pipeline import PipelineConfig
    from less_ray.preflight import epoch_mean_lrs, preflight_pipeline
    cfg = load_config(PipelineConfig, _config(tmp_path, tiny_model_dir, demo_files,
                                              **{"warmup.scaling": {"effective_batch_size": 16},
                                                 "warmup.optim": {"warmup_ratio": 0.0},
                                                 "train.scaling": {"effective_batch_size": 32}}))
    f = preflight_pipeline(cfg)
    assert not f.errors
    # 20 warmup examples, batch 16: 2 steps an epoch (no warmup warning); selection 20 < train batch 32: warned
    assert not any(w.startswith("warmup") for w in f.warnings), f.warnings
    assert any("train: the selection has 20 examples" in w and "train.scaling.effective_batch_size" in w
               for w in f.warnings), f.warnings
    # the schedule the preflight predicts is the one the loop records (HF linear, ceil(3% of total) warmup)
    assert epoch_mean_lrs(20, 128, 4, 2e-5, 0.03, "linear")[0] == 0.0
    assert all(x > 0 for x in epoch_mean_lrs(20, 4, 4, 2e-5, 0.03, "linear"))


def test_own_task_needs_two_targets_to_hold_one_out(tmp_path, tiny_model_dir, demo_files, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text(open(demo_files[1], encoding="utf-8").readline())
    err = _fails_before_ray(["pipeline", "--config", str(_config(tmp_path, tiny_model_dir, demo_files,
                                                                     targets={"capitals": str(one)}, eval=None))], capsys)
    assert "targets.capitals: 1 example(s); task 'capitals' has no built-in benchmark" in err
    assert "eval.heldout.capitals" in err


def test_stage_clis_check_paths_before_ray(tmp_path, capsys):
    cfg = tmp_path / "w.yaml"
    cfg.write_text(yaml.safe_dump({"pool": "nope.jsonl", "out": "w", "base_model": "nomodel"}))
    err = _fails_before_ray(["warmup", "--config", str(cfg)], capsys)
    assert "pool: no such file or folder:" in err and "nope.jsonl" in err
    assert "base_model:" in err and "nomodel does not exist" in err


def test_plan_prints_the_work_per_stage(tmp_path, tiny_model_dir, demo_files, capsys):
    cfg = _config(tmp_path, tiny_model_dir, demo_files)
    assert main(["plan", "--config", str(cfg), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    s = plan["stages"]
    assert plan["pool"]["records"] == 400 and plan["targets"]["demo_capitals"] == {"targets": 10, "held_out": 0}
    assert s["warmup"]["examples"] == 20 and s["warmup"]["optimizer_steps"] == 5 * 4
    assert s["extract"]["examples"] == (400 + 10) * 4 and s["select"]["k_per_task"] == 20
    assert s["extract"]["feature_bytes"] == (400 + 10) * 4 * 8192 * 2
    # the adapter's size from peft on the meta device equals the real adapter's
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=128, lora_alpha=512, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert plan["model"]["lora_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert main(["plan", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "warmup   20 examples x 4 epochs = 20 optimizer steps" in text and "extract  1640 gradient features" in text
    # extract.precision auto is resolved for this host and shown with its reason
    pr = s["extract"]["precision"]
    assert pr["requested"] == "auto" and pr["resolved"] in ("fp32", "bf16") and "matmul" in pr["why"]
    assert f"precision auto -> {pr['resolved']} (" in text
    # and so is the training dtype (LoRA on CPU: by the same probe)
    for stage in ("warmup", "train"):
        dt = s[stage]["dtype"]
        assert dt["requested"] == "auto" and dt["resolved"] in ("float32", "bfloat16") and "matmul" in dt["why"]
        assert f"dtype auto -> {dt['resolved']} (" in text


def test_plan_sizes_a_run_for_n_candidates(tmp_path, tiny_model_dir, demo_files, capsys):
    """#27: `plan --candidates N` scales every count to N pool records; the store by d x dtype;
    extraction time from the measured rate where this model was measured on this kind of host."""
    from less_ray.core.precision import cpu_model
    from less_ray.estimate import measured_rate
    cfg = _config(tmp_path, tiny_model_dir, demo_files)
    n = 1_000_000
    assert main(["plan", "--config", str(cfg), "--json", "--candidates", str(n)]) == 0
    plan = json.loads(capsys.readouterr().out)
    e = plan["stages"]["extract"]
    assert plan["pool"]["records"] == n and e["examples"] == (n + 10) * 4 and e["feature_bytes"] == (n + 10) * 4 * 8192 * 2
    assert plan["stages"]["select"]["k_per_task"] == n // 20
    sizes = {(z["dim"], z["dtype"]): z["bytes"] for z in e["sizing"]}
    assert sizes[(1024, "float16")] == n * 4 * 1024 * 2 and sizes[(8192, "float32")] == n * 4 * 8192 * 4
    # coded dtypes: the codes plus one float32 scale per row
    assert sizes[(8192, "int8")] == n * 4 * (8192 + 4) and sizes[(8192, "sign")] == n * 4 * (1024 + 4)
    assert sizes[(1024, "int4")] == n * 4 * (512 + 4)
    assert 0.5 * 2 ** 30 < e["actor_memory_bytes"] < 64 * 2 ** 30
    # a coded extract.dtype codes the pool; the 10 targets stay float16 (pipeline.target_dtype)
    assert main(["plan", "--config", str(cfg), "--json", "--candidates", str(n), "--set", "extract.dtype=int8"]) == 0
    coded = json.loads(capsys.readouterr().out)["stages"]["extract"]
    assert coded["feature_bytes"] == n * 4 * (8192 + 4) + 10 * 4 * 8192 * 2
    m = measured_rate(tiny_model_dir, cpu_model())
    if m is None:  # another kind of host: the FLOP estimate only
        assert "measured" not in e
    else:
        assert e["measured"]["seconds"] == round(m["s_per_example"] * (n + 10) * 4 / plan["cpu_cores"], 1)
    assert main(["plan", "--config", str(cfg), "--candidates", str(n)]) == 0
    text = capsys.readouterr().out
    assert f"sized for {n} candidates" in text and "pool store by d x dtype (4 checkpoint(s)):" in text
    assert "d=8192: float16 " in text and ", sign " in text


def test_example_configs_load_with_paths_made_absolute(tmp_path, monkeypatch):
    from pathlib import Path

    from less_ray.config import load_config
    from less_ray.pipeline import PipelineConfig
    root = Path(__file__).resolve().parents[1] / "examples"
    monkeypatch.chdir(tmp_path)
    own = load_config(PipelineConfig, root / "own_task.yaml")
    assert own.pool == str(tmp_path / "data" / "pool.jsonl") and own.base_model == str(tmp_path / "models" / "smollm2")
    assert own.targets == {"my_task": str(tmp_path / "data" / "targets.jsonl")} and own.chat_format == "less"
    gpu = load_config(PipelineConfig, root / "gpu_cluster.yaml")
    assert gpu.warmup.scaling.use_gpu and gpu.extract.actor_num_gpus == 1.0 and gpu.ray.address == "auto"


def test_log_lines_go_to_the_stderr_of_the_moment(monkeypatch):
    """A handler made under one stderr (a test's capture) writes to the current one later, never
    to a closed stream (it once broke a later test's CLI call with '--- Logging error ---')."""
    import io
    import logging

    from less_ray.console import configure
    configure(False)
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    logging.getLogger("less_ray").info("stage x done")
    assert "less_ray stage x done" in buf.getvalue()
