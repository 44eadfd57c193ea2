"""Every file under cluster/ loads, carries its required fields and keeps the security rules.

Files are found by glob, so a new recipe is checked as soon as it is added; a file of a kind this
module does not know fails `test_every_file_has_a_check` until a check is written for it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ranksearch.tracking.credentials import has_password

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"

ALL_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file())
LAUNCHER_FILES = sorted((CLUSTER / "launcher").glob("*.yaml"))
K8S_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
SBATCH_FILES = sorted(CLUSTER.rglob("*.sbatch"))
DOCKERFILES = sorted(CLUSTER.rglob("Dockerfile*"))
MARKDOWN_FILES = sorted(CLUSTER.rglob("*.md"))
# Everything that configures or launches something (docs excluded: they may quote bad examples).
RECIPE_FILES = LAUNCHER_FILES + K8S_FILES + SBATCH_FILES + DOCKERFILES

LAUNCHER_COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
SPACE_RE = re.compile(r"^(\S*/)?search_spaces/[\w.-]+\.ya?ml$")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _ids(paths: list[Path]) -> list[str]:
    return [_rel(p) for p in paths]


def _ray_pin() -> str:
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(r"^ray==(\S+)", text, re.M)
    assert match, "constraints.txt pins ray"
    return match.group(1)


def _bash_syntax_ok(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)


def _all_strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _all_strings(key)
            yield from _all_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _all_strings(item)


def _comment_text(path: Path) -> str:
    """The file's comment lines without '#', shell line continuations joined."""
    lines = [
        re.sub(r"^\s*#\s?", "", line)
        for line in path.read_text().splitlines()
        if line.lstrip().startswith("#")
    ]
    return re.sub(r"\\\n\s*", " ", "\n".join(lines))


def _sweep_commands(path: Path) -> list[str]:
    """Every `ranksearch sweep ...` command a recipe runs or tells the user to run."""
    if path.suffix == ".yaml":
        texts = [_comment_text(path)]
        for doc in yaml.safe_load_all(path.read_text()):
            texts.extend(_all_strings(doc))
    else:  # shell: only what runs (the header's prose and sbatch examples are comments)
        code = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
        texts = [re.sub(r"\\\n\s*", " ", code)]
    found = []
    for text in texts:
        found += [m.group(0) for m in re.finditer(r"ranksearch sweep [^\n'\"]*(?:['\"][^\n'\"]*)*", text)]
    return found


# --------------------------------------------------------------------------------------------
# Coverage


def test_cluster_folder_has_every_recipe():
    names = {_rel(p) for p in ALL_FILES}
    for required in (
        "cluster/README.md",
        "cluster/launcher/aws.yaml",
        "cluster/launcher/gcp.yaml",
        "cluster/launcher/local.yaml",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayjob.yaml",
        "cluster/kuberay/mlflow.yaml",
        "cluster/kuberay/storage.yaml",
        "cluster/kuberay/ray-token-secret.yaml",
        "cluster/slurm/ranksearch.sbatch",
    ):
        assert required in names


@pytest.mark.parametrize("path", ALL_FILES, ids=_ids(ALL_FILES))
def test_every_file_has_a_check(path):
    covered = set(RECIPE_FILES) | set(MARKDOWN_FILES)
    assert path in covered, (
        f"{_rel(path)}: no test covers this kind of file; add one to {Path(__file__).name}"
    )


# --------------------------------------------------------------------------------------------
# Security rules that hold for every recipe file


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_ids(RECIPE_FILES))
def test_recipe_never_disables_auth_or_publishes_ports(path):
    # Comments may name what is forbidden ("never LoadBalancer"); check what is configured.
    text = "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"RAY_AUTH_MODE\W{1,4}disabled", text, re.I), "token auth must stay on"
    assert not re.search(r"^\s*mode:\s*['\"]?disabled", text, re.M | re.I), "authOptions.mode must be token"
    assert not re.search(r"dashboard[-_]host\W{1,4}0\.0\.0\.0", text), "dashboard must not bind 0.0.0.0"
    assert not re.search(r"\b(LoadBalancer|NodePort)\b", text), "no public Service types"
    assert "0.0.0.0/0" not in text, "no firewall rule open to the world"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_ids(RECIPE_FILES))
def test_sweep_commands_use_a_search_space_and_shared_storage(path):
    commands = _sweep_commands(path)
    if path.parent.name in ("launcher", "slurm") or path.name in ("raycluster.yaml", "rayjob.yaml"):
        assert commands, f"{_rel(path)} shows no `ranksearch sweep` command"
    for command in commands:
        words = shlex.split(command.rstrip("'\""), comments=True)
        space = words[2]
        if space == "$SPACE":  # the sbatch script: check its default instead
            match = re.search(r"^SPACE=\$\{SPACE:-([^}]+)\}", path.read_text(), re.M)
            assert match, "SPACE needs a default"
            space = match.group(1)
        assert SPACE_RE.match(space), f"{command!r}: expected search_spaces/<name>.yaml, got {space!r}"
        assert "--runs-dir" in words or "--storage" in words, (
            f"{command!r}: sweep state must go to shared storage (--runs-dir)"
        )
        assert "--address" in words, f"{command!r}: must join the recipe's Ray cluster (--address)"


# --------------------------------------------------------------------------------------------
# Ray cluster launcher configs


def _launcher(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict)
    return config


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_validates_against_rays_schema(path):
    """The same check `ray up` runs: fill in the provider defaults, then ray-schema.json."""
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _launcher(path)
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    # The file as written, before defaults: catches misspelled and misplaced fields.
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    # And after merging the provider's defaults.yaml, exactly as `ray up` does.
    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_commands_are_valid_bash(path):
    config = _launcher(path)
    for key in LAUNCHER_COMMAND_KEYS:
        for command in config.get(key, []):
            result = _bash_syntax_ok(command)
            assert result.returncode == 0, f"{key}: {command!r}: {result.stderr}"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_keeps_token_auth_and_loopback_dashboard(path):
    config = _launcher(path)
    # The token reaches every node through file_mounts, never through the file itself.
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    setup = "\n".join(config["setup_commands"])
    assert "export RAY_AUTH_MODE=token" in setup
    assert "chmod 600 ~/.ray/auth_token" in setup

    head = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert len(head) == 1 and "--head" in head[0]
    assert "RAY_AUTH_MODE=token ray start" in head[0]
    assert re.search(r"--dashboard-host[= ]127\.0\.0\.1\b", head[0])
    workers = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    assert workers and all("RAY_AUTH_MODE=token ray start" in c for c in workers)

    mlflow = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert len(mlflow) == 1
    assert "--host 127.0.0.1" in mlflow[0]
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in mlflow[0]

    for rule in config["provider"].get("security_group", {}).get("IpPermissions", []):
        assert rule.get("FromPort") not in (5000, 6379, 8265, 10001), f"do not open Ray/MLflow ports: {rule}"


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=_ids(LAUNCHER_FILES))
def test_launcher_installs_checkout_and_mounts_shared_storage(path):
    config = _launcher(path)
    assert config["file_mounts"].get("~/ranksearch") == "."
    assert "**/.venv" in config.get("rsync_exclude", []), "do not upload the local virtualenv"
    setup = "\n".join(config["setup_commands"])
    # the [cluster] extra: ray[default] (dashboard, Jobs API for ranksearch submit) and the PostgreSQL driver
    assert "pip install -c constraints.txt '.[cluster]'" in setup
    assert re.search(r"mountpoint -q /shared\b", setup), "the sweep folder must be on shared storage"
    assert "/shared/ranksearch" in setup


@pytest.mark.parametrize(
    "path",
    [p for p in LAUNCHER_FILES if p.stem != "local"],
    ids=_ids([p for p in LAUNCHER_FILES if p.stem != "local"]),
)
def test_cloud_launcher_has_cpu_head_and_gpu_workers(path):
    config = _launcher(path)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "keep trials off the head node"
    gpu_workers = [
        t for name, t in types.items() if name != config["head_node_type"] and t["resources"].get("GPU")
    ]
    assert gpu_workers, "needs a GPU worker node type"
    assert all(t.get("max_workers", 0) > 0 for t in gpu_workers)


# --------------------------------------------------------------------------------------------
# Kubernetes manifests (KubeRay, MLflow, storage, token Secret)


def _k8s_docs() -> list[tuple[Path, dict]]:
    docs = []
    for path in K8S_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def _of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _k8s_docs() if doc.get("kind") == kind]


def _ray_cluster_specs() -> list[dict]:
    specs = [doc["spec"] for doc in _of_kind("RayCluster")]
    specs += [doc["spec"]["rayClusterSpec"] for doc in _of_kind("RayJob") if "rayClusterSpec" in doc["spec"]]
    return specs


def _pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("path", K8S_FILES, ids=_ids(K8S_FILES))
def test_manifests_parse_with_required_fields(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{_rel(path)} is empty"
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc
        assert doc["kind"] != "Ingress", "publish nothing; use kubectl port-forward"


def test_raycluster_and_rayjob_required_fields():
    clusters, jobs = _of_kind("RayCluster"), _of_kind("RayJob")
    assert clusters and jobs
    for doc in clusters + jobs:
        assert doc["apiVersion"] == "ray.io/v1"
    for job in jobs:
        spec = job["spec"]
        assert spec.get("entrypoint", "").strip()
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), (
            "exactly one of rayClusterSpec/clusterSelector"
        )
        assert spec.get("backoffLimit", 0) == 0, "a retry would restart the sweep without --resume"
    for spec in _ray_cluster_specs():
        assert spec["rayVersion"] == _ray_pin(), "rayVersion must match constraints.txt"
        head = spec["headGroupSpec"]
        assert head["template"]["spec"]["containers"]
        assert str(head.get("rayStartParams", {}).get("num-gpus")) == "0", "keep trials off the head"
        assert spec["workerGroupSpecs"]
        for group in spec["workerGroupSpecs"]:
            assert group["groupName"]
            assert group["template"]["spec"]["containers"]
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) > 0


def test_ray_pods_use_token_auth_and_stay_internal():
    secrets = {doc["metadata"]["name"] for doc in _of_kind("Secret")}
    for spec in _ray_cluster_specs():
        assert spec["authOptions"]["mode"] == "token"
        assert spec["authOptions"].get("secretName") in secrets
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        for key in ("dashboard-host", "dashboard_host"):
            assert head.get("rayStartParams", {}).get(key) != "0.0.0.0"
        for template in _pod_templates(spec):
            pod = template["spec"]
            assert not pod.get("hostNetwork"), "hostNetwork would put Ray's ports on the node's address"
            for container in pod["containers"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                # Explicit, so an operator that ignores authOptions fails closed.
                assert env.get("RAY_AUTH_MODE") == "token", container["name"]
                assert not any("hostPort" in p for p in container.get("ports", []))


def test_ray_pods_mount_the_shared_rwx_volume():
    pvcs = {doc["metadata"]["name"]: doc for doc in _of_kind("PersistentVolumeClaim")}
    for spec in _ray_cluster_specs():
        for template in _pod_templates(spec):
            pod = template["spec"]
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod["volumes"]
                if "persistentVolumeClaim" in v
            }
            mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/shared") in claims, "every Ray pod mounts the sweep folder at /shared"
            pvc = pvcs[claims[mounts["/shared"]]]
            assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], (
                "pods on several nodes write the sweep folder"
            )
            assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "ranksearch"


def test_deployments_and_services_select_their_pods():
    deployments, services = _of_kind("Deployment") + _of_kind("StatefulSet"), _of_kind("Service")
    assert deployments and services
    for dep in deployments:
        selector = dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), (
            f"{dep['metadata']['name']}: selector must match pod labels"
        )
    for svc in services:
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
        selected = [
            d
            for d in deployments
            if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"Service {svc['metadata']['name']} selects no Deployment"
        port_names = {
            p.get("name")
            for d in selected
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert isinstance(target, int) or target in port_names


def test_mlflow_server_is_small_internal_and_reached_by_the_sweep():
    (dep,) = [d for d in _of_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    (svc,) = [s for s in _of_kind("Service") if s["metadata"]["name"] == "mlflow"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate", "one sqlite writer"
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["command"] + container.get("args", []))
    assert "--workers=1" in args
    # Host-header allow-list (DNS rebinding): the Service name and localhost, never "*".
    allowed = args.split("--allowed-hosts=")[1].split()[0].split(",")
    assert "*" not in allowed and f"{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}" in allowed
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # PostgreSQL backend store; its password from a Secret, never in the URL
    backend = args.split("--backend-store-uri=")[1].split()[0]
    assert backend.startswith("postgresql+psycopg2://") and not has_password(backend)
    assert env["PGPASSWORD"]["secretKeyRef"]["name"] == "ranksearch-postgres"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in dep["spec"]["template"]["spec"]["volumes"]]
    assert set(claims) <= {p["metadata"]["name"] for p in _of_kind("PersistentVolumeClaim")}

    port = svc["spec"]["ports"][0]["port"]
    for job in _of_kind("RayJob"):
        assert f"--tracking-uri http://{svc['metadata']['name']}:{port}" in job["spec"]["entrypoint"]


def test_the_study_and_mlflow_share_a_postgresql_server_whose_password_stays_in_a_secret():
    (db,) = [s for s in _of_kind("StatefulSet") if s["metadata"]["name"] == "postgres"]
    (svc,) = [s for s in _of_kind("Service") if s["metadata"]["name"] == "postgres"]
    assert svc["spec"]["type"] == "ClusterIP"
    (container,) = db["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["secretKeyRef"]["name"] == "ranksearch-postgres"
    assert "scram-sha-256" in env["POSTGRES_INITDB_ARGS"]
    for job in _of_kind("RayJob"):
        words = job["spec"]["entrypoint"].split()
        study = words[words.index("--storage") + 1]
        assert study.startswith("postgresql://") and "@postgres:5432/" in study and not has_password(study)
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        names = {e["name"]: e.get("valueFrom") for e in head["env"]}
        assert names["PGPASSWORD"]["secretKeyRef"]["name"] == "ranksearch-postgres"


def test_token_secret_template_holds_no_token():
    (secret,) = _of_kind("Secret")
    values = {**secret.get("stringData", {}), **secret.get("data", {})}
    assert set(values) == {"auth_token"}, "KubeRay reads the key auth_token"
    assert values["auth_token"] in ("", None), "never commit a token; create it with kubectl create secret"
    assert "kubectl create secret generic" in (CLUSTER / "kuberay" / "ray-token-secret.yaml").read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=_ids(DOCKERFILES))
def test_dockerfile_matches_the_pins(path):
    text = path.read_text()
    base = re.search(r"^FROM\s+rayproject/ray:(\S+)", text, re.M)
    assert base and base.group(1).startswith(_ray_pin() + "-"), "base image Ray must equal constraints.txt"
    assert 'pip install --no-cache-dir -c constraints.txt ".[cluster]"' in text  # + the PostgreSQL driver
    assert re.search(r"^COPY .*search_spaces", text, re.M)
    assert not re.search(r"^COPY\s+(--\S+\s+)*\.\s", text, re.M), "copy named files only (keeps .venv out)"


# --------------------------------------------------------------------------------------------
# SLURM


@pytest.mark.parametrize("path", SBATCH_FILES, ids=_ids(SBATCH_FILES))
def test_sbatch_syntax_and_contents(path):
    text = path.read_text()
    result = _bash_syntax_ok(text)
    assert result.returncode == 0, result.stderr
    assert text.startswith("#!/bin/bash")
    assert re.search(r"^#SBATCH --nodes=\d+", text, re.M)
    assert re.search(r"^#SBATCH --gpus-per-node=\d+", text, re.M)
    assert "ray symmetric-run" in text
    assert '--min-nodes "$SLURM_JOB_NUM_NODES"' in text
    assert "--dashboard-host 127.0.0.1" in text
    assert "export RAY_AUTH_MODE=token" in text
    assert "export RAY_AUTH_TOKEN_PATH=" in text
    assert 'chmod 600 "$TOKEN_FILE"' in text


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_sbatch(tmp_path: Path, **extra_env: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the sbatch script with stub srun/scontrol/hostname/ray and report what `ray` received."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "ray-call.json"
    # srun: drop its own options and run the command on "this node".
    _stub(bin_dir, "srun", 'while [[ "$1" == -* ]]; do [[ "$1" == -w ]] && shift; shift; done\nexec "$@"\n')
    _stub(bin_dir, "scontrol", 'printf "node001\\nnode002\\n"\n')
    _stub(bin_dir, "hostname", 'echo "10.1.2.3 10.9.9.9"\n')
    # ray: record its arguments and what it sees of the token, as the real one would read it.
    ray = bin_dir / "ray"
    ray.write_text(
        f"#!{sys.executable}\n"
        "import json, os, stat, sys\n"
        "p = os.environ.get('RAY_AUTH_TOKEN_PATH', '')\n"
        "perm = lambda f: oct(stat.S_IMODE(os.stat(f).st_mode))\n"
        "info = {'argv': sys.argv[1:], 'mode': os.environ.get('RAY_AUTH_MODE'), 'token_path': p,\n"
        "        'token_perm': perm(p), 'dir_perm': perm(os.path.dirname(p)),\n"
        "        'token_len': len(open(p).read().strip())}\n"
        f"json.dump(info, open({str(record)!r}, 'w'))\n"
    )
    ray.chmod(0o755)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "activate").write_text("# stub venv\n")
    checkout = tmp_path / "checkout"
    checkout.mkdir(exist_ok=True)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(tmp_path),
        "USER": "tester",
        "SLURM_SUBMIT_DIR": str(checkout),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node[001-002]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_PER_NODE": "a100:8",
        "SLURM_CPUS_PER_TASK": "16",
        "VENV": str(venv),
        **extra_env,
    }
    script = CLUSTER / "slurm" / "ranksearch.sbatch"
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    info = json.loads(record.read_text()) if record.exists() else {}
    return result, info


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_runs_symmetric_run_with_private_token(tmp_path):
    storage = tmp_path / "shared" / "runs"
    result, info = _run_sbatch(tmp_path, STORAGE=str(storage))
    assert result.returncode == 0, result.stderr + result.stdout
    argv = info["argv"]
    ray_args, entry = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    assert ray_args[:3] == ["symmetric-run", "--address", "10.1.2.3:6379"]
    assert ray_args[ray_args.index("--min-nodes") + 1] == "2"
    assert ray_args[ray_args.index("--num-gpus") + 1] == "8"
    assert ray_args[ray_args.index("--dashboard-host") + 1] == "127.0.0.1"
    assert entry[:3] == ["ranksearch", "sweep", "search_spaces/dra.yaml"]
    assert entry[entry.index("--runs-dir") + 1] == str(storage)
    assert "--storage" not in entry  # the study: the sweep folder's journal unless STUDY_STORAGE is set
    assert entry[entry.index("--address") + 1] == "auto"
    assert "--resume" not in entry
    # The token: token mode on, a 256-bit value in a user-only file on the shared storage.
    assert info["mode"] == "token"
    assert info["token_path"].startswith(str(storage) + "/")
    assert info["token_perm"] == "0o600" and info["dir_perm"] == "0o700"
    assert info["token_len"] == 64
    assert not Path(info["token_path"]).exists(), "the token file is removed when the job ends"
    assert "ssh -N -L 8265:127.0.0.1:8265" in result.stdout


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_sbatch_resume_flag(tmp_path):
    result, info = _run_sbatch(
        tmp_path, STORAGE=str(tmp_path / "runs"), RESUME="1", SPACE="search_spaces/other.yaml"
    )
    assert result.returncode == 0, result.stderr
    entry = info["argv"][info["argv"].index("--") + 1 :]
    assert entry[2] == "search_spaces/other.yaml"
    assert entry[-1] == "--resume"
    assert entry[entry.index("--name") + 1] == "other"


# --------------------------------------------------------------------------------------------
# README


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=_ids(MARKDOWN_FILES))
def test_markdown_links_resolve(path):
    text = path.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{_rel(path)} links to missing {target}"


def test_readme_covers_every_recipe_and_the_rules():
    text = (CLUSTER / "README.md").read_text()
    for path in RECIPE_FILES:
        assert path.name in text, f"cluster/README.md does not explain {_rel(path)}"
    for phrase in (
        "RAY_AUTH_MODE=token",
        "--resume",
        "port-forward",
        "ssh -N -L",
        "ReadWriteMany",
        "CVE-2023-48022",
    ):
        assert phrase in text
