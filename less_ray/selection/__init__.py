"""The selection layer every selector shares, LESS's scorer included: below `scoring` and `selectors`.

- `folder`: the score folder, the one artifact every selector writes (`ScoreFolderWriter`) and
  `select` / `report` read (`score_blocks`);
- `select`: the top k of a score folder (`less-ray select`), the size rule k (`selection_count`)
  and the pool a folder records (`pool_file`, `pool_records`, `pool_size`);
- `report`: `less-ray report`, one HTML page about any selector's selection;
- `minhash`, `seeded`: the near-duplicate MinHash and the seeded uniform score that the `dedup`
  stage and the `random` selector run and the report reuses in process.

Nothing here imports `less_ray.scoring`, `less_ray.selectors`, `less_ray.pipeline` or `less_ray.cli`.
"""
