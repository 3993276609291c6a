"""LESS step 3: influence scores of the pool against the targets over the gradient datastore (the score
stage). The score-folder format, select and report it shares with every selector live below it, in
less_ray.selection."""
