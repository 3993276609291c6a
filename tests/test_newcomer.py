"""A newcomer's first hour, run as they would run it: the README's main command from an empty
folder with its default (relative) output, and the own-task example config with relative paths.

Both go through a subprocess from a fresh working directory: a test that passes absolute
paths once hid a broken main command (Ray Train moves workers into their own folders, where a
relative model path named nothing and transformers tried the hub)."""
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_main_command() -> str:
    """The first command of the README's set-up section, as written there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set-up on a fresh machine", 1)[1]
    return re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("LESS_RAY_VERBOSE", None)
    env.pop("RAY_ADDRESS", None)
    return env


def _run(cmd: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_readme_main_command_from_an_empty_folder(tmp_path):
    """`pip install -e . && less-ray demo`: the install half runs where the README's reader is
    (the project root) as a dry run — installing the project again from a copy would re-point
    this environment's package; the demo half runs exactly as written, from an empty folder."""
    command = readme_main_command()
    parts = [p.strip() for p in command.split("&&")]
    assert parts[0].startswith("pip install") and parts[-1].startswith("less-ray"), command
    for part in parts:
        if part.startswith("pip install"):
            res = _run(f"{part} --dry-run --no-deps --quiet", ROOT, timeout=300)
        else:
            res = _run(part, tmp_path)
        assert res.returncode == 0, f"{part!r} failed:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    out = res.stdout + res.stderr
    run = tmp_path / "less_ray_demo" / "run"  # the default, relative output folder
    report = run / "report.html"
    assert report.exists() and f"report:    {report}" in out
    assert f"selection: {run / 'scores' / 'demo_arithmetic' / 'top_p0.05.jsonl'}" in out
    assert "LESS picked" in out and "answer-token loss" in out and "lower is better" in out
    # quiet by default: a few lines per stage, not Ray's and the libraries' logs
    lines = [x for x in out.splitlines() if x.strip()]
    assert len(lines) < 60, "\n".join(lines)
    assert not [x for x in lines if "Warning" in x or "Traceback" in x], "\n".join(lines)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["selected_share"] > 3 * summary["pool_share"]  # LESS finds the target family


@pytest.fixture(scope="module")
def own_task_folder(tmp_path_factory, tiny_model_dir):
    """What a user has: a pool, targets of their task without task/subtask fields, a model folder
    and the example config copied beside them, all referred to by relative paths."""
    from less_ray.data.demo import generate_pool, generate_targets
    from less_ray.data.io import write_jsonl
    folder = tmp_path_factory.mktemp("own_task")
    (folder / "data").mkdir()
    write_jsonl(generate_pool(400, seed=1), folder / "data" / "pool.jsonl")
    with open(folder / "data" / "targets.jsonl", "w", encoding="utf-8") as fh:
        for r in generate_targets("capitals", 15, seed=1):
            fh.write(json.dumps({"messages": r.messages}) + "\n")  # no id, task, subtask: a user's file
    shutil.copytree(tiny_model_dir, folder / "models" / "smollm2")  # the tiny model stands in for SmolLM2
    cfg = yaml.safe_load((ROOT / "examples" / "own_task.yaml").read_text())
    cfg["targets"] = {"capitals": cfg["targets"]["my_task"]}  # a custom task name
    # sized for the tiny stand-in model: a short run that still moves it (the rest as the example)
    cfg["max_seq_length"] = 128
    cfg["extract"].update(dims=[256])
    for stage in ("warmup", "train"):
        cfg[stage]["lora"] = {"r": 8, "alpha": 32}
        cfg[stage]["optim"] = {"lr": 3e-3, "epochs": cfg[stage]["optim"]["epochs"]}
        cfg[stage]["scaling"]["effective_batch_size"] = 4
    (folder / "own_task.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def test_own_task_pipeline_with_relative_paths(own_task_folder):
    res = _run("less-ray pipeline --config own_task.yaml", own_task_folder)
    assert res.returncode == 0, res.stderr[-6000:]
    run = own_task_folder / "runs" / "my_task"
    # 20% of the 15 targets held out (3), never used to select
    held = [json.loads(x) for x in (run / "targets" / "capitals.heldout.jsonl").read_text().splitlines()]
    used = [json.loads(x) for x in (run / "targets" / "capitals.jsonl").read_text().splitlines()]
    assert len(held) == 3 and len(used) == 12
    assert not {h["id"] for h in held} & {u["id"] for u in used}
    assert all(u["task"] == "capitals" and u["subtask"] == "capitals" for u in used)
    # eval: the held-out answer loss of the base and of the trained model
    trained = json.loads((run / "eval" / "capitals.json").read_text())["tasks"]["loss:capitals"]
    base = json.loads((run / "eval" / "capitals.base.json").read_text())["tasks"]["loss:capitals"]
    assert trained["metric"] == base["metric"] == "answer_loss" and trained["n"] == base["n"] == 3
    assert math.isfinite(trained["score"]) and math.isfinite(base["score"])
    assert trained["score"] < base["score"]  # 4 epochs at lr 3e-3 on capitals-heavy picks move the tiny model
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "loss:capitals" in report
    # the saved config replays with absolute paths: it works from any folder
    saved = yaml.safe_load((run / "pipeline.config.yaml").read_text())
    assert Path(saved["base_model"]).is_absolute() and Path(saved["pool"]).is_absolute()
