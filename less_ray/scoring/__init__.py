"""LESS step 3: influence scores over the gradient datastore, top-k selection, report."""
