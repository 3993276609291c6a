"""rds_plus (RDS+): the round-robin order against a line-by-line transcription of RDS+'s own
picking loop, the position-weighted pooling against RDS+'s own embedding code path (one example
at a time, `output_hidden_states`), and the selector end to end through the CLI."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from less_ray.core.round_robin import FLOAT32_EXACT, RoundRobin, key_scores, round_robin_keys
from round_robin_reference import rds_plus_picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_robin_keys_reproduce_rds_plus_picking_for_every_budget(seed):
    rng = np.random.default_rng(seed)
    n, t = 60, 7
    # few distinct values: many ties, within a list (pool order decides) and across lists (rounds)
    lists = [rng.integers(0, 5, n).astype(np.float64) for _ in range(t)]
    keys, picker = round_robin_keys(lists, n)
    assert len(set(keys.tolist())) == n  # one (round, list) pair per example: no ties
    order = np.argsort(keys, kind="stable").tolist()
    for budget in (1, 5, 13, 30, n):
        assert order[:budget] == rds_plus_picks(lists, budget)
    # the picking list ranks the example at its round
    for i in range(n):
        rank = np.argsort(-lists[picker[i]], kind="stable").tolist().index(i)
        assert keys[i] == rank * t + picker[i]
    score, exact = key_scores(keys)
    assert exact == n and np.argsort(-score, kind="stable").tolist() == order


def test_round_robin_refuses_bad_lists():
    rr = RoundRobin(3)
    with pytest.raises(ValueError, match="cover the pool"):
        rr.add(np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        rr.add(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="no list"):
        rr.keys()
    assert key_scores(np.array([0, FLOAT32_EXACT, FLOAT32_EXACT + 1]))[1] == 1


def _rds_plus_reference_embedding(lm, tok, messages, max_len=2048):
    """compute_influence_cosinesim.py --pooling weighted_mean --batch_size 1 on one example, with
    encode_with_messages_format's text (no system message here)."""
    text = ""
    for m in messages:
        if m["role"] == "user":
            text += "<|user|>\n" + m["content"].strip() + "\n"
        else:
            text += "<|assistant|>\n" + m["content"].strip() + tok.eos_token + "\n"
    ids = tok(text.strip(), return_tensors="pt", max_length=max_len, truncation=True).input_ids
    with torch.no_grad():
        hidden = lm(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)["hidden_states"][-1]
    w = torch.arange(hidden.size(1)).unsqueeze(0) + 1
    w = w / w.sum(dim=1, keepdim=True)
    e = torch.sum(hidden * w.unsqueeze(-1), dim=1)[0]
    return (e / torch.linalg.vector_norm(e)).numpy()


def test_weighted_mean_pooling_matches_rds_plus_one_example_at_a_time(tiny_model_dir):
    from less_ray.models import load_model_and_tokenizer
    from less_ray.selectors.embeddings import TextEncoder
    rows = [{"id": f"e{i}", "messages": [{"role": "user", "content": f"  question {i} " + "word " * (3 * i)},
                                          {"role": "assistant", "content": "answer " * (i + 1) + " "}]}
            for i in range(6)]
    enc = TextEncoder("model", str(tiny_model_dir), 2048, "tulu_stripped", batch_size=4, pooling="weighted_mean")
    got, _, n_tok = enc.embed(rows)  # length-sorted, right-padded batches of 4
    assert len(set(n_tok.tolist())) > 1  # the batches hold padding
    lm, tok = load_model_and_tokenizer(tiny_model_dir)
    lm.eval()
    for r, g in zip(rows, got):
        np.testing.assert_allclose(g, _rds_plus_reference_embedding(lm, tok, r["messages"]), atol=2e-5)
    plain = TextEncoder("model", str(tiny_model_dir), 2048, "tulu_stripped", batch_size=4).embed(rows)[0]
    assert not np.allclose(plain, got, atol=1e-3)  # the weights matter


def test_rds_plus_cli_end_to_end_is_the_round_robin_of_its_embeddings(demo, tiny_model_dir, capsys):
    from less_ray.cli import main
    from less_ray.data.io import read_records
    from less_ray.store import read_store
    out = demo["root"] / "rds_plus"
    assert main(["selector", "rds_plus", "--pool", demo["pool"], "--targets", f"arith={demo['targets']}", "--out",
                 str(out), "--top-p", "0.05", "--num-cpus", "2", "--set", f"model={tiny_model_dir}",
                 "--set", "max_actors=1", "--set", f"embeddings={demo['emb']}", "--set", "sims_bytes=4000"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["aggregation"] == "round_robin" and summary["encoder"]["pooling"] == "weighted_mean"
    assert summary["encoder"]["chat_format"] == "tulu_stripped" and summary["encoder"]["max_tokens"] == 2048
    assert summary["tasks"]["arith"]["targets"] == 6 and summary["tasks"]["arith"]["target_chunk"] == 5  # chunked
    pool_ids = [r.id for r in read_records(demo["pool"]).records]
    sel = [json.loads(x)["id"] for x in (out / "arith" / "top_p0.05.jsonl").read_text().splitlines()]
    assert len(sel) == len(set(sel)) == 10 and set(sel) <= set(pool_ids)
    # the reference: RDS+'s picking loop over the stored unit embeddings' cosines
    root = next(p for p in (demo["root"] / "embeddings").iterdir() if p.name.startswith("model-"))
    pool = read_store(root / "pool", ("id", "features"))
    tgt = read_store(root / "targets_arith", ("features",))
    sims = pool["features"] @ tgt["features"].T
    want = [pool["id"][i] for i in rds_plus_picks([sims[:, j] for j in range(sims.shape[1])], 10)]
    assert sorted(sel) == sorted(want)
    t = pq.read_table(out / "arith" / "scores.parquet").to_pydict()
    by_score = sorted(range(len(t["id"])), key=lambda i: -t["score"][i])
    assert [t["id"][i] for i in by_score[:10]] == want  # the picking order itself
    # aggregation max: each pool example's best cosine
    assert main(["selector", "rds_plus", "--pool", demo["pool"], "--targets", f"arith={demo['targets']}", "--out",
                 str(demo["root"] / "rds_plus_max"), "--top-p", "0.05", "--num-cpus", "2",
                 "--set", f"model={tiny_model_dir}", "--set", "max_actors=1", "--set", f"embeddings={demo['emb']}",
                 "--set", "aggregation=max"]) == 0
    capsys.readouterr()
    m = pq.read_table(demo["root"] / "rds_plus_max" / "arith" / "scores.parquet").to_pydict()
    np.testing.assert_allclose(m["score"], sims.max(1), atol=1e-6)
    assert main(["config", "selector:rds_plus"]) == 0
    shown = capsys.readouterr().out
    assert all(k in shown for k in ("pooling: str = weighted_mean", "aggregation: str = round_robin",
                                    "chat_format", "embed_max_tokens: int = 2048"))
