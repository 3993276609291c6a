"""Ray job entrypoint: `ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/train.py --config X.yaml`.

Inside a Ray job RAY_ADDRESS is set, so the stage joins the cluster instead of starting Ray.
"""
import sys
from pathlib import Path

# the submitted working dir's less_ray, and not this folder: jobs/select.py would shadow the
# standard library's `select` for every import that follows
sys.path[0] = str(Path(__file__).resolve().parents[1])
from less_ray.cli import main  # noqa: E402

sys.exit(main(["train", *sys.argv[1:]]))
