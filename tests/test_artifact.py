"""artifact.claim: a folder holds only what one key produced, for every stage that reuses outputs."""
from __future__ import annotations

import json

import pytest

from less_ray.artifact import claim, key_changes, key_digest


def _fill(folder):
    (folder / "shards").mkdir(parents=True)
    (folder / "shards" / "part-00000.arrow").write_bytes(b"x")
    (folder / "manifest.json").write_text("{}")
    (folder / "notes.txt").write_text("n")


def test_same_key_keeps_everything_and_another_key_removes_all_but_the_key(tmp_path):
    folder = tmp_path / "store"
    assert claim(folder, {"seed": 0}, "_key.json") is False  # a new folder: nothing to remove
    _fill(folder)
    assert claim(folder, {"seed": 0}, "_key.json") is False
    assert (folder / "manifest.json").exists() and (folder / "shards" / "part-00000.arrow").exists()
    assert claim(folder, {"seed": 1}, "_key.json") is True
    assert sorted(p.name for p in folder.iterdir()) == ["_key.json"]
    assert json.loads((folder / "_key.json").read_text()) == {"seed": 1}


def test_wipe_names_what_goes_and_outputs_without_a_key_count_as_foreign(tmp_path):
    folder = tmp_path / "emb"
    _fill(folder)  # outputs of unknown inputs: no key file yet
    assert claim(folder, {"model": "m"}, "_encoder.json", wipe=("manifest.json", "shards")) is True
    assert sorted(p.name for p in folder.iterdir()) == ["_encoder.json", "notes.txt"]


def test_keep_may_accept_or_refuse_the_recorded_key(tmp_path):
    folder = tmp_path / "s"
    claim(folder, {"a": 1, "appended": []}, "_key.json")
    _fill(folder)
    assert claim(folder, {"a": 1, "appended": ["x"]}, "_key.json", keep=lambda before: True) is False
    assert (folder / "manifest.json").exists()
    assert json.loads((folder / "_key.json").read_text())["appended"] == ["x"]

    def refuse(before):
        raise ValueError(f"other inputs ({key_changes(before, {'a': 2})})")
    with pytest.raises(ValueError, match=r"other inputs \(a 1 -> 2, appended \['x'\] -> None\)"):
        claim(folder, {"a": 2}, "_key.json", keep=refuse)
    assert (folder / "manifest.json").exists()  # a refusal removes nothing


def test_key_digest_ignores_key_order():
    assert key_digest({"a": 1, "b": [2]}) == key_digest({"b": [2], "a": 1}) != key_digest({"a": 2, "b": [2]})
