"""LESS step 2: the gradient datastore (per-example LoRA gradient features) on Ray Data."""
