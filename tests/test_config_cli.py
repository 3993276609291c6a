"""YAML configs onto dataclasses, resolved configs beside outputs, and the CLI."""
import json
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from less_ray.cli import main
from less_ray.config import ConfigError, config_hash, load_config, save_config
from less_ray.data.convert import ConvertConfig
from less_ray.data.io import read_records


@dataclass
class Inner:
    r: int = 128
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class Outer:
    name: str = "x"
    lr: float = 2e-5
    inner: Inner = field(default_factory=Inner)
    note: str | None = None


def test_yaml_maps_onto_nested_dataclasses_and_replays(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run1\ninner:\n  r: 8\n", encoding="utf-8")
    cfg = load_config(Outer, path, {"lr": 1e-4, "note": None})
    assert cfg == Outer(name="run1", lr=1e-4, inner=Inner(r=8))
    saved = save_config(cfg, tmp_path / "out" / "config.yaml", extra={"records": 3})
    again = load_config(Outer, saved)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(Outer()) != config_hash(cfg)


@pytest.mark.parametrize("stage", ["extract", "score", "selector", "dedup"])
def test_ray_stages_share_flat_pool_settings(stage, tmp_path):
    # every Ray Data stage reads the same actor-pool and Ray keys at its top level, places its
    # actors with them, and writes its own options first in the resolved config
    from less_ray.extract.job import ExtractConfig
    from less_ray.scoring.job import ScoreConfig
    from less_ray.selectors.base import SelectorConfig
    from less_ray.selectors.minhash import DedupConfig
    cls = {"extract": ExtractConfig, "score": ScoreConfig, "selector": SelectorConfig, "dedup": DedupConfig}[stage]
    path = tmp_path / "c.yaml"
    path.write_text("out: o\nmin_actors: 2\nmax_actors: 5\nactor_num_cpus: 0.5\nactor_num_gpus: 1\n"
                    "address: auto\n", encoding="utf-8")
    cfg = load_config(cls, path)
    args = cfg.map_batches_args()
    assert (args["num_cpus"], args["num_gpus"]) == (0.5, 1.0) and cfg.address == "auto"
    assert (args["compute"].min_size, args["compute"].max_size) == (2, 5)
    saved = save_config(cfg, tmp_path / "resolved.yaml")
    keys = [ln.split(":")[0] for ln in saved.read_text().splitlines() if ln and not ln.startswith(("#", " ", "-"))]
    assert keys.index("out") < keys.index("address") < keys.index("min_actors")
    assert load_config(cls, saved) == cfg


def test_pipeline_pool_options_reach_the_stages(tmp_path):
    from less_ray.pipeline import PipelineConfig, extract_config, score_config
    cfg = load_config(PipelineConfig, None, {"extract": {"max_actors": 7, "actor_num_gpus": 1},
                                             "score": {"min_actors": 3, "actor_num_gpus": 0.5},
                                             "ray": {"address": "auto"}})
    e = extract_config(cfg, "ckpt", "data.jsonl", tmp_path, "adam")
    assert (e.max_actors, e.actor_num_gpus, e.address) == (7, 1.0, "auto")
    s = score_config(cfg, ["pool0"], {"bbh": ["t0"]}, tmp_path)
    assert (s.min_actors, s.actor_num_gpus, s.address, s.tasks[0].name) == (3, 0.5, "auto", "bbh")
    assert not s.subtask_scores
    # select's round-robin order needs the subtask scores: the pipeline's score stage writes them
    rr = load_config(PipelineConfig, None, {"select": {"order": "round_robin"}})
    assert score_config(rr, ["pool0"], {"bbh": ["t0"]}, tmp_path).subtask_scores


@pytest.mark.parametrize("text, fragment", [
    ("nme: typo\n", "nme"),
    ("inner:\n  r: many\n", "inner.r"),
    ("- a\n- b\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_bad_config_names_file_and_problem(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_convert_user_files_with_quarantine_and_resolved_config(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "1", "messages": [{"role": "user", "content": "q"},
                                                       {"role": "assistant", "content": "a"}]}) + "\n"
                   + "{broken\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    assert main(["data", "convert", "--inputs", str(src), "--out", str(out)]) == 1  # default: raise
    assert f"{src}:2: malformed JSON" in capsys.readouterr().err and not out.exists()

    assert main(["data", "convert", "--inputs", str(src), "--out", str(out), "--on-error", "quarantine"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["records"] == 1 and result["rejected"] == 1
    assert [r.id for r in read_records(out).records] == ["1"]
    q = [json.loads(x) for x in (tmp_path / "out.parquet.quarantine.jsonl").read_text().splitlines()]
    assert q[0]["line"] == 2 and q[0]["raw"] == "{broken"
    cfg = load_config(ConvertConfig, tmp_path / "out.parquet.config.yaml")
    assert cfg.on_error == "quarantine" and cfg.inputs == [str(src)]


def test_convert_targets_and_candidates(tmp_path, capsys):
    from conftest import need
    from less_ray.data.sources import ENV_DATA_ROOT, default_data_root
    try:
        default_data_root()
    except FileNotFoundError:
        need(False, f"real data not found (set {ENV_DATA_ROOT})")
    out = tmp_path / "t.jsonl"
    assert main(["data", "convert", "--targets", "bbh", "mmlu", "tydiqa", "--out", str(out)]) == 0
    recs = read_records(out).records
    assert len(recs) == 81 + 285 + 9 and {r.task for r in recs} == {"bbh", "mmlu", "tydiqa"}
    capsys.readouterr()
    pool = tmp_path / "p.jsonl"
    assert main(["data", "convert", "--candidates", "hh_rlhf", "--out", str(pool)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["records"], result["skipped_no_response"], result["source_rows"]) == (2308, 4, 2312)
    assert len((tmp_path / "p.jsonl.skipped.jsonl").read_text().splitlines()) == 4


def test_inspect_exit_codes_counts_and_lengths(tmp_path, tiny_model_dir, capsys):
    good = tmp_path / "good.jsonl"
    lines = [json.dumps({"id": str(i), "source": "a" if i % 3 else "b",
                         "messages": [{"role": "user", "content": "word " * i},
                                      {"role": "assistant", "content": "ok"}]}) for i in range(1, 7)]
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["data", "inspect", str(good), "--json", "--tokenizer", str(tiny_model_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["by_source"] == {"a": 4, "b": 2} and summary["rejected"] == 0
    assert summary["lengths"]["min"] < summary["lengths"]["max"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n[1]\n" + lines[0] + "\n", encoding="utf-8")
    assert main(["data", "inspect", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:2: expected a JSON object" in out and f"{bad}:3: duplicate id '1'" in out
    assert "1 valid records, 2 rejected" in out


def test_inspect_reports_truncation_policy(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "L", "source": "s", "messages": [
        {"role": "user", "content": "apple " * 100}, {"role": "assistant", "content": "yes"}]}) + "\n")
    assert main(["data", "inspect", str(path), "--tokenizer", str(tiny_model_dir), "--max-seq-length", "16"]) == 0
    assert "1 all assistant tokens truncated away" in capsys.readouterr().out


@pytest.mark.parametrize("stage", ["warmup", "train", "extract", "score", "pipeline"])
def test_stage_configs_are_checked_with_file_names(stage, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_option: 1\n")
    assert main([stage, "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "no_such_option" in err


def test_console_script_and_module_entry():
    for cmd in (["less-ray", "--help"], [sys.executable, "-m", "less_ray", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "demo" in out and "data" in out and "warmup" in out


def test_data_demo_writes_pool_and_targets(tmp_path, capsys):
    assert main(["data", "demo", str(tmp_path), "--n-pool", "100", "--family", "sorting"]) == 0
    pool = read_records(tmp_path / "pool.jsonl").records
    targets = read_records(tmp_path / "targets.jsonl").records
    assert len(pool) == 100 and {r.task for r in targets} == {"demo_sorting"}
