"""Ray job entrypoint: `ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/select.py --config X.yaml`.

Inside a Ray job RAY_ADDRESS is set, so the stage joins the cluster instead of starting Ray.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the submitted working dir's less_ray
from less_ray.cli import main  # noqa: E402

sys.exit(main(["select", *sys.argv[1:]]))
