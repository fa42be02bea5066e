"""Static checks of the deployment files: compose, Kubernetes manifests, Dockerfiles and the dashboard.

No Docker engine and no network: the compose file is validated against the bundled Compose schema (and with
`docker compose config` too where the compose plugin is installed), every Kubernetes object against the Kubernetes
schemas that `kubernetes-validate` ships, KEDA's objects by explicit structural checks.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared.config import ENV_PREFIX, Settings
from shared.queueing import queue_name

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = ROOT / "docker"
COMPOSE = DEPLOY / "compose.yaml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSION = "1.32"  # the oldest Kubernetes minor the manifests promise to work on

SETTINGS = set(Settings.model_fields)
# Environment variables the containers may set that are not farm settings, each for a named reason.
OTHER_ENV = {
    "AWS_ACCESS_KEY_ID",  # boto3's credentials for the S3 store (shared/storage.py)
    "AWS_SECRET_ACCESS_KEY",
    "HF_HOME",  # where hub models are cached (worker/engine/models/loading.py)
}
# What a cluster-mode process cannot start without (Settings.check and the S3 storage).
REQUIRED_FOR_CLUSTER = {
    "RENDERFARM_DATABASE_URL",
    "RENDERFARM_REDIS_URL",
    "RENDERFARM_STORAGE_URL",
    "RENDERFARM_PUBLIC_URL",
    "RENDERFARM_S3_PUBLIC_ENDPOINT_URL",
    "RENDERFARM_MODEL",
}
# The API's secrets: the scheduler's alone (issue 15, finding 8: they reached every worker's environment).
API_SECRETS = {"RENDERFARM_API_TOKENS", "RENDERFARM_METRICS_TOKEN"}
REQUIRED_FOR_SCHEDULER = REQUIRED_FOR_CLUSTER | API_SECRETS
REQUIRED_FOR_WORKERS = REQUIRED_FOR_CLUSTER | {"RENDERFARM_MODELS_DIR", "RENDERFARM_METRICS_PORT"}


def check_env_names(names: set[str], where: str) -> None:
    """Every RENDERFARM_ name is a setting; every other name is one of OTHER_ENV."""
    farm = {name for name in names if name.startswith(ENV_PREFIX)}
    unknown = sorted(name for name in farm if name[len(ENV_PREFIX) :].lower() not in SETTINGS)
    assert not unknown, f"{where} sets variables that are no setting of shared/config.py: {unknown}"
    lowercase = sorted(name for name in farm if name != name.upper())
    assert not lowercase, f"{where}: write settings in upper case: {lowercase}"
    others = sorted(names - farm - OTHER_ENV)
    assert not others, f"{where} sets variables that are neither settings nor allowed others: {others}"


def test_env_name_check_catches_a_typo() -> None:
    check_env_names({"RENDERFARM_REDIS_URL", "HF_HOME"}, "ok")
    with pytest.raises(AssertionError, match="RENDERFARM_REDIS_UR"):
        check_env_names({"RENDERFARM_REDIS_UR"}, "typo")
    with pytest.raises(AssertionError, match="PYTHONPATH"):
        check_env_names({"PYTHONPATH"}, "other")


# ---------------------------------------------------------------------------------------------------------------------
# compose


def load_compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _command_words(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(amount) * units[unit]
    assert total > 0, f"cannot read duration {duration!r}"
    return total


def test_compose_validates_against_the_compose_schema() -> None:
    schema = json.loads((SCHEMAS / "compose_spec.json").read_text(encoding="utf-8"))
    # The schema names draft 2019-09 (its "$schema" URI carries a "#" jsonschema does not look up).
    jsonschema.Draft201909Validator.check_schema(schema)
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(load_compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_compose_schema_check_can_fail() -> None:
    schema = json.loads((SCHEMAS / "compose_spec.json").read_text(encoding="utf-8"))
    broken = load_compose()
    broken["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["gpu_count"] = 1
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def _docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False, timeout=60)
    return probe.returncode == 0


def test_docker_compose_config_accepts_the_file_where_the_plugin_exists(tmp_path: Path) -> None:
    """`docker compose config` needs no engine; without the compose plugin the schema test above stands alone."""
    if not _docker_compose_available():
        assert COMPOSE.is_file()  # nothing more to run here: the schema check covers validation
        return
    env_file = tmp_path / "env"
    env_file.write_text(
        "POSTGRES_PASSWORD=p\nS3_ACCESS_KEY=a\nS3_SECRET_KEY=s\nAPI_TOKENS=t:0123456789abcdef\n"
        "METRICS_TOKEN=m0123456789abcdef\n"
        "GRAFANA_ADMIN_PASSWORD=g\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(env_file), "--profile", "monitoring", "config"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_the_farm_services() -> None:
    services = load_compose()["services"]
    for name in ("postgres", "redis", "s3", "create-bucket", "migrate", "scheduler", "worker"):
        assert name in services, f"compose.yaml has no {name} service"
    assert "minio" not in json.dumps(services).lower(), "MinIO's community images are no longer published"
    assert services["s3"]["image"].startswith("chrislusf/seaweedfs:")
    assert ":latest" not in services["s3"]["image"]
    migrate = _command_words(services["migrate"]["command"])
    assert migrate == ["renderfarm", "db", "upgrade"]
    for name in ("scheduler", "worker"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["create-bucket"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "s3"):
        assert "healthcheck" in services[name], f"{name} needs a health check for depends_on"


def test_compose_redis_never_evicts_and_persists() -> None:
    command = _command_words(load_compose()["services"]["redis"]["command"])
    assert command[0] == "redis-server"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--appendonly") + 1] == "yes"


def test_compose_worker_reserves_gpus_and_scales() -> None:
    services = load_compose()["services"]
    worker = services["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    # --scale worker=N: no fixed name, no published port, and a shared lock volume for renderfarm-gpu-slot.
    assert "container_name" not in worker
    assert "ports" not in worker
    assert any(str(volume).endswith(":/run/renderfarm-gpus") for volume in worker["volumes"])
    assert _seconds(worker["stop_grace_period"]) > Settings.model_fields["job_deadline_max_s"].default
    deadline = float(load_compose()["x-renderfarm-env"]["RENDERFARM_JOB_DEADLINE_MAX_S"])
    assert _seconds(worker["stop_grace_period"]) > deadline
    queues = _command_words(worker["command"])
    assert queues[:3] == ["python", "-m", "worker.service"]
    assert "--device" in queues
    assert queues[queues.index("--device") + 1] == "cuda"


def test_compose_builds_and_mounts_files_that_exist() -> None:
    services = load_compose()["services"]
    built = 0
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert context == ROOT, f"{name}: the build context is the repository root"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']} is missing"
            built += 1
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts {source}, which does not exist"
    assert built >= 2


def _compose_env(service: dict[str, Any]) -> set[str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return {str(item).split("=", 1)[0] for item in environment}
    return set(environment)


def test_compose_environment_is_exactly_farm_settings() -> None:
    services = load_compose()["services"]
    farm_services = ("create-bucket", "migrate", "scheduler", "worker")
    for name in farm_services:
        names = _compose_env(services[name])
        check_env_names(names, f"compose service {name}")
    assert _compose_env(services["scheduler"]) >= REQUIRED_FOR_SCHEDULER
    assert _compose_env(services["worker"]) >= REQUIRED_FOR_WORKERS
    for name in ("create-bucket", "migrate", "worker"):
        assert not _compose_env(services[name]) & API_SECRETS, f"compose service {name} gets the API's tokens"
    # the settings a farm process reads must parse: build Settings from the literal values
    literal = {
        key: value
        for key, value in load_compose()["x-renderfarm-env"].items()
        if key.startswith(ENV_PREFIX) and "${" not in str(value)
    }
    Settings(**{key[len(ENV_PREFIX) :].lower(): value for key, value in literal.items()})


# ---------------------------------------------------------------------------------------------------------------------
# Kubernetes


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def kustomization() -> dict[str, Any]:
    return k8s_documents(K8S / "kustomization.yaml")[0]


def applied_objects() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k deploy/k8s` creates (the resources of the kustomization)."""
    objects: list[dict[str, Any]] = []
    for resource in kustomization()["resources"]:
        objects += k8s_documents(K8S / resource)
    return objects


def all_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in k8s_documents(path):
            yield path, doc


def find(kind: str, name: str) -> dict[str, Any]:
    for obj in applied_objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in the kustomization's resources")


def deployments() -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in applied_objects() if obj["kind"] == "Deployment"}


KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def test_every_kubernetes_object_validates_against_the_kubernetes_schemas() -> None:
    checked = 0
    for path, obj in all_objects():
        if obj["apiVersion"].startswith("keda.sh/"):
            assert obj["kind"] in KEDA_KINDS, f"{path.name}: unexpected KEDA kind {obj['kind']}"
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{path.name} {obj['kind']}/{obj['metadata']['name']}: {exc.message}") from exc
        checked += 1
    assert checked >= 10


def test_the_kubernetes_validation_can_fail() -> None:
    deployment = find("Deployment", "renderfarm-worker-batch")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo of "resources"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_the_images() -> None:
    kust = kustomization()
    assert kust["kind"] == "Kustomization"
    listed = set(kust["resources"])
    for resource in listed:
        assert (K8S / resource).is_file(), f"kustomization lists missing {resource}"
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk, "every manifest but the secret example is applied by the kustomization"
    images = {image["name"] for image in kust["images"]}
    used = set()
    for obj in applied_objects():
        pod = _pod_spec(obj)
        if pod is not None:
            used |= {container["image"] for container in pod["containers"]}
    assert used == images == {"renderfarm-scheduler", "renderfarm-worker"}


def test_secrets_are_not_applied_and_the_example_covers_the_references() -> None:
    assert not [obj for obj in applied_objects() if obj["kind"] == "Secret"], "no secret values in the kustomization"
    example = {obj["metadata"]["name"]: obj for obj in k8s_documents(K8S / "secret.example.yaml")}
    for obj in applied_objects():
        pod = _pod_spec(obj)
        for container in pod["containers"] if pod else []:
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in example
    auth = find("TriggerAuthentication", "renderfarm-keda-redis")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["key"] in example[ref["name"]]["stringData"]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in ("Deployment", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def _configmap_data() -> dict[str, str]:
    return find("ConfigMap", "renderfarm-config")["data"]


def _container_env(container: dict[str, Any]) -> set[str]:
    """The names a container's environment gets: its env entries and the keys of its envFrom sources."""
    names = {entry["name"] for entry in container.get("env", [])}
    secrets = {obj["metadata"]["name"]: obj for obj in k8s_documents(K8S / "secret.example.yaml")}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(find("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            names |= set(secrets[source["secretRef"]["name"]]["stringData"])
    return names


def test_kubernetes_environment_is_exactly_farm_settings() -> None:
    containers = 0
    for obj in applied_objects():
        pod = _pod_spec(obj)
        for container in pod["containers"] if pod else []:
            names = _container_env(container)
            check_env_names(names, f"{obj['kind']} {obj['metadata']['name']}")
            name = obj["metadata"]["name"]
            if container["image"] == "renderfarm-worker":
                required = REQUIRED_FOR_WORKERS
            else:
                required = REQUIRED_FOR_SCHEDULER if name == "renderfarm-scheduler" else REQUIRED_FOR_CLUSTER
            missing = required - names
            assert not missing, f"{name} lacks {sorted(missing)}"
            if name != "renderfarm-scheduler":
                assert not names & API_SECRETS, f"{name} gets the API's tokens"
            containers += 1
    assert containers == 4  # migrate, scheduler, two worker tiers
    data = _configmap_data()
    values: dict[str, Any] = {key[len(ENV_PREFIX) :].lower(): value for key, value in data.items()}
    Settings(**values)  # values parse too


def test_scheduler_deployment_service_and_probes() -> None:
    deployment = find("Deployment", "renderfarm-scheduler")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert deployment["spec"]["replicas"] >= 2
    service = find("Service", "renderfarm-scheduler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(key) == value for key, value in service["spec"]["selector"].items())
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    job = find("Job", "renderfarm-migrate")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["renderfarm", "db", "upgrade"]


def _worker_deployments() -> dict[str, dict[str, Any]]:
    return {
        name: obj
        for name, obj in deployments().items()
        if obj["spec"]["template"]["spec"]["containers"][0]["image"] == "renderfarm-worker"
    }


def test_worker_pods_have_one_gpu_and_outlast_the_longest_job() -> None:
    deadline = float(_configmap_data().get("RENDERFARM_JOB_DEADLINE_MAX_S", Settings().job_deadline_max_s))
    metrics_port = int(_configmap_data()["RENDERFARM_METRICS_PORT"])
    workers = _worker_deployments()
    assert set(workers) == {"renderfarm-worker-interactive", "renderfarm-worker-batch"}
    for name, deployment in workers.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > deadline, name
        (container,) = pod["containers"]
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1", name
        assert str(container["resources"]["requests"]["nvidia.com/gpu"]) == "1", name
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["metrics"] == metrics_port
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port)


def _worker_tier(deployment: dict[str, Any]) -> str:
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--queues" not in args, "a tier's workers consume every model's queues of the tier, not pinned ones"
    return str(args[args.index("--tier") + 1])


def test_pod_disruption_budgets_select_existing_pods() -> None:
    budgets = [obj for obj in applied_objects() if obj["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == 3
    covered = set()
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matching = [
            name
            for name, deployment in deployments().items()
            if all(deployment["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        assert len(matching) == 1, f"{budget['metadata']['name']} selects {matching}"
        covered |= set(matching)
    assert covered == set(deployments())


def test_keda_scaled_objects_scale_workers_on_their_queue() -> None:
    """A targeted structural check (KEDA's CRD schema is not bundled): every field KEDA needs, with sane values."""
    scaled = {obj["metadata"]["name"]: obj for obj in applied_objects() if obj["kind"] == "ScaledObject"}
    auths = {obj["metadata"]["name"] for obj in applied_objects() if obj["kind"] == "TriggerAuthentication"}
    workers = _worker_deployments()
    assert set(scaled) == set(workers)
    window = int(_configmap_data()["RENDERFARM_DISPATCH_WINDOW_PER_QUEUE"])
    exported = set(_scheduler_metric_names())
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        target = spec["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment"
        assert target["name"] == name
        interactive = name.endswith("interactive")
        queue = queue_name(None, batch=not interactive)
        tier = "interactive" if interactive else "batch"
        assert _worker_tier(workers[name]) == tier
        if interactive:
            assert spec["minReplicaCount"] >= 1, "an interactive tier keeps a warm worker"
        else:
            assert spec["minReplicaCount"] == 0, "a batch tier scales from zero"
        assert spec["maxReplicaCount"] > spec["minReplicaCount"]
        assert spec["maxReplicaCount"] <= window, "the broker list never holds more than the dispatch window"
        assert workers[name]["spec"]["replicas"] == spec["minReplicaCount"]
        triggers = {trigger["type"]: trigger for trigger in spec["triggers"]}
        redis_trigger = triggers["redis"]["metadata"]
        assert redis_trigger["listName"] == queue
        assert int(redis_trigger["listLength"]) >= 1
        assert re.fullmatch(r"[\w.-]+:\d+", redis_trigger["address"])
        assert triggers["redis"]["authenticationRef"]["name"] in auths
        prometheus = triggers["prometheus"]["metadata"]
        # Every queue of the tier, whatever the model: the PromQL regex (in a PromQL string, `\\.` is `\.`).
        patterns = {pattern.replace("\\\\", "\\") for pattern in re.findall(r'queue=~"([^"]+)"', prometheus["query"])}
        assert len(patterns) == 1, prometheus["query"]
        (pattern,) = patterns
        for model in (None, "tiny-inpaint", "sub/x.safetensors"):
            assert re.fullmatch(pattern, queue_name(model, batch=not interactive)), (pattern, model)
            assert not re.fullmatch(pattern, queue_name(model, batch=interactive)), (pattern, model)
        used = set(re.findall(r"\b(renderfarm_[a-z_]+)\b", prometheus["query"]))
        assert used, prometheus["query"]
        assert used <= exported, f"the query uses metrics the scheduler does not export: {used - exported}"
        for trigger in spec["triggers"]:
            assert all(isinstance(value, str) for value in trigger["metadata"].values()), "KEDA metadata are strings"


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfiles


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(relative: str) -> bool:
    for pattern in dockerignore_patterns():
        bare = pattern.removeprefix("**/")
        if fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, bare):
            return True
        if relative.split("/")[0] == pattern or fnmatch.fnmatch(Path(relative).name, bare):
            return True
    return False


DOCKERFILES = ["scheduler.Dockerfile", "worker.Dockerfile"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_files_that_exist_and_are_in_the_context(name: str) -> None:
    instructions = dockerfile_instructions(DOCKER / name)
    stages: list[str] = []
    copies = 0
    for keyword, rest in instructions:
        if keyword == "FROM":
            words = rest.split()
            assert len(words) == 3, f"{name}: name every stage ({rest})"
            assert words[1].upper() == "AS", f"{name}: name every stage ({rest})"
            stages.append(words[2])
        elif keyword in ("COPY", "ADD"):
            assert keyword == "COPY", f"{name}: use COPY, not ADD"
            words = shlex.split(rest)
            flags = [word for word in words if word.startswith("--")]
            paths = [word for word in words if not word.startswith("--")]
            sources = paths[:-1]
            assert sources, f"{name}: COPY {rest} has no source"
            from_stage = next((flag.split("=", 1)[1] for flag in flags if flag.startswith("--from=")), None)
            if from_stage is not None:
                assert from_stage in stages, f"{name}: COPY --from={from_stage} names no earlier stage"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY source {source} does not exist"
                assert not ignored(source.rstrip("/")), f"{name}: COPY source {source} is excluded by .dockerignore"
                copies += 1
    assert len(stages) >= 2, f"{name} is multi-stage"
    assert copies >= 4


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_unprivileged_with_a_health_check(name: str) -> None:
    instructions = dockerfile_instructions(DOCKER / name)
    last_stage = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    final = instructions[last_stage:]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, f"{name}: the final stage sets a USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: the final stage runs as a non-root user"
    assert any(keyword == "HEALTHCHECK" for keyword, _ in final)
    assert any(keyword == "CMD" for keyword, _ in final)
    env_names = set()
    for keyword, rest in instructions:
        if keyword == "ENV":
            env_names |= {match for match in re.findall(r"(?:^|\s)([A-Z_][A-Z0-9_]*)=", rest)}
    farm = {env for env in env_names if env.startswith(ENV_PREFIX)}
    unknown = {env for env in farm if env[len(ENV_PREFIX) :].lower() not in SETTINGS}
    assert not unknown, f"{name} sets unknown settings {unknown}"


def test_scheduler_image_has_no_torch_and_the_worker_image_has_cuda_torch() -> None:
    scheduler = " ".join(rest for _, rest in dockerfile_instructions(DOCKER / "scheduler.Dockerfile")).lower()
    assert "torch" not in scheduler.replace("no torch", "")
    assert "worker" not in [
        shlex.split(rest)[0]
        for keyword, rest in dockerfile_instructions(DOCKER / "scheduler.Dockerfile")
        if keyword == "COPY" and not rest.startswith("--")
    ]
    worker = dockerfile_instructions(DOCKER / "worker.Dockerfile")
    args = dict(rest.split("=", 1) for keyword, rest in worker if keyword == "ARG" and "=" in rest)
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert "runtime" in args["CUDA_IMAGE"]
    assert re.search(r"/whl/cu\d+$", args["TORCH_INDEX"])
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject, "the image pins the torch of pyproject's worker extra"
    assert any(keyword == "RUN" and "--index-url" in rest and "torch==" in rest for keyword, rest in worker)


def test_dockerignore_keeps_secrets_and_the_venv_out() -> None:
    for path in (".venv", ".git", "tests", ".env", "deploy/.env", "models"):
        assert ignored(path), f".dockerignore should exclude {path}"
    for path in ("pyproject.toml", "README.md", "shared", "worker", "docker/gpu_slot.py"):
        assert not ignored(path), f".dockerignore must not exclude {path}"


def _gpu_slot() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_slot", DOCKER / "gpu_slot.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_slot_gives_each_replica_its_own_gpu(tmp_path: Path) -> None:
    gpu_slot = _gpu_slot()
    gpus = ["GPU-aaaa", "GPU-bbbb"]
    first = gpu_slot.take_gpu(gpus, str(tmp_path))
    second = gpu_slot.take_gpu(gpus, str(tmp_path))
    assert first is not None
    assert second is not None
    assert first[0] == "GPU-aaaa"
    assert second[0] == "GPU-bbbb"
    assert gpu_slot.take_gpu(gpus, str(tmp_path)) is None, "a third replica must not double up on a GPU"
    os.close(first[1])  # that replica exited: its GPU is free again
    third = gpu_slot.take_gpu(gpus, str(tmp_path))
    assert third is not None
    assert third[0] == "GPU-aaaa"
    os.close(second[1])
    os.close(third[1])


def test_gpu_slot_execs_the_command_holding_the_lock(tmp_path: Path) -> None:
    """The exec'd command runs with CUDA_VISIBLE_DEVICES set and still holds the GPU's lock."""
    probe = (
        "import fcntl, os, sys; "
        "fd = os.open(os.path.join(sys.argv[1], 'GPU-x.lock'), os.O_RDWR); "
        "busy = False\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n    busy = True\n"
        "print(os.environ['CUDA_VISIBLE_DEVICES'], busy)"
    )
    # the probe opens its own descriptor: flock conflicts between descriptors, so "busy" proves the inherited lock
    result = subprocess.run(
        [
            sys.executable,
            str(DOCKER / "gpu_slot.py"),
            "--lock-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-c",
            probe,
            str(tmp_path),
        ],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "GPU-x"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["GPU-x", "True"]


# ---------------------------------------------------------------------------------------------------------------------
# Grafana


def _scheduler_metric_names() -> list[str]:
    source = (ROOT / "scheduler" / "metrics.py").read_text(encoding="utf-8")
    return re.findall(r'"(renderfarm_[a-z_]+)"', source)


def _worker_metric_names() -> list[str]:
    source = (ROOT / "worker" / "metrics.py").read_text(encoding="utf-8")
    return re.findall(r'"(renderfarm_worker_[a-z_]+)"', source)


def _exposed_series_names() -> set[str]:
    """Names as Prometheus stores them: counters get _total, histograms _bucket/_sum/_count."""
    names: set[str] = set()
    for base in _scheduler_metric_names() + _worker_metric_names():
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_info"}
    return names


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "renderfarm.json").read_text(encoding="utf-8"))
    exposed = _exposed_series_names()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= set(re.findall(r"\b(renderfarm_[a-z_]+)\b", target["expr"]))
    assert used, "the dashboard queries renderfarm metrics"
    assert used <= exposed, f"the dashboard queries unknown metrics: {sorted(used - exposed)}"
    for wanted in (
        "renderfarm_queue_depth",
        "renderfarm_jobs",
        "renderfarm_job_wait_seconds_bucket",
        "renderfarm_job_run_seconds_bucket",
        "renderfarm_job_failures_total",
        "renderfarm_worker_step_seconds_bucket",
        "renderfarm_worker_gpu_memory_bytes",
        "renderfarm_worker_oom_total",
        "renderfarm_worker_model_loads_total",
    ):
        assert wanted in used, f"the dashboard has no panel for {wanted}"
    provisioning = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/renderfarm.yaml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ---------------------------------------------------------------------------------------------------------------------
# Commands: what the images, compose and Kubernetes run must be commands the farm has


def _all_commands() -> list[tuple[str, list[str]]]:
    commands: list[tuple[str, list[str]]] = []
    for name in DOCKERFILES:
        for keyword, rest in dockerfile_instructions(DOCKER / name):
            if keyword == "CMD" and rest.startswith("["):
                commands.append((name, json.loads(rest)))
    for service_name, service in load_compose()["services"].items():
        command = service.get("command")
        if command and "build" in service:  # the services that run the farm's own images
            commands.append((f"compose {service_name}", _command_words(command)))
    for obj in applied_objects():
        pod = _pod_spec(obj)
        for container in pod["containers"] if pod else []:
            argv = container.get("command") or container.get("args")
            commands.append((obj["metadata"]["name"], argv))
    return commands


def test_every_command_is_one_the_farm_has(monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.service
    from renderfarm.cli import build_parser

    started: list[tuple[list[str], str, str | None]] = []
    monkeypatch.setattr(
        worker.service,
        "run_worker_process",
        lambda settings, queues, device, hostname=None, tier=None: started.append((queues, device, tier)),
    )
    checked = 0
    for where, argv in _all_commands():
        if argv[0] == "renderfarm":
            build_parser().parse_args(argv[1:])  # exits (SystemExit) on an unknown command or flag
        elif argv[:3] == ["python", "-m", "worker.service"]:
            worker.service.main([word.replace("${WORKER_QUEUES:-", "").rstrip("}") for word in argv[3:]])
            queues, device, tier = started[-1]
            assert device == "cuda", where
            # No --queues (the image's default command, compose without WORKER_QUEUES, a tier's pool): every
            # servable model's queues (of the tier), chosen when it starts and followed as model files appear.
            assert queues is None or all(queue.startswith("rf.") for queue in queues), where
            assert queues is None or tier is None, where
        elif argv[:2] == ["python", "-c"]:
            compile(argv[2], where, "exec")
        else:
            raise AssertionError(f"{where} runs an unknown command {argv}")
        checked += 1
    assert checked >= 8
