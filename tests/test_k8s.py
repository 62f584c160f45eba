"""The KubeRay manifests, container image and ignore files under k8s/.

Checks what a reviewer would: versions agree with constraints.txt, every pod is non-root and
bounded, no credentials are inline, the dashboard stays inside the cluster, the entrypoint is a
command the real CLI accepts, and the documents validate against both the Kubernetes pod schema
(kubernetes-validate, offline) and KubeRay's own CRD schema (../shared/kuberay-crds).
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRD_DIR = REPO.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
#: Kubernetes version the pod templates are validated against (kubernetes-validate ships it)
K8S_VERSION = "1.30.0"
CREDENTIAL_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|SESSION", re.I)
MANIFESTS = sorted(K8S.glob("*.yaml"))


def _ray_pin() -> str:
    match = re.search(r"^ray==(\S+)\s*$", (REPO / "constraints.txt").read_text(), re.M)
    assert match, "constraints.txt must pin ray==X.Y.Z"
    return match.group(1)


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _ray_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _documents() if doc.get("kind") in CRD_FILES]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return spec["rayClusterSpec"] if doc["kind"] == "RayJob" else spec


def _groups(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, group spec) for the head group and every worker group."""
    cluster = _cluster_spec(doc)
    yield "head", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod template) for every pod the document creates, the RayJob submitter included."""
    for name, group in _groups(doc):
        yield name, group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]


def _containers(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, container, pod spec) for every container and init container."""
    for name, template in _pod_templates(doc):
        pod = template["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{name}/{container['name']}", container, pod


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _ids(docs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{name}:{doc['kind']}" for name, doc in docs]


RAY_DOCS = _ray_docs()


def test_manifests_present() -> None:
    kinds = sorted(doc["kind"] for _, doc in RAY_DOCS)
    assert kinds == ["RayCluster", "RayJob"], f"expected one RayJob and one RayCluster: {kinds}"
    assert (K8S / "Dockerfile").is_file()
    assert (REPO / ".dockerignore").is_file()
    assert (K8S / "README.md").is_file()


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_api_version_and_ray_version(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "ray.io/v1"
    assert _cluster_spec(doc)["rayVersion"] == _ray_pin(), (
        f"{name}: rayVersion must equal the ray pin in constraints.txt (the image's Ray)"
    )


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_every_container_has_requests_and_limits(name: str, doc: dict[str, Any]) -> None:
    for where, container, _ in _containers(doc):
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for kind in ("cpu", "memory"):
                assert kind in resources.get(part, {}), f"{name} {where}: no {part}.{kind}"
        if not where.startswith("submitter/"):
            # Ray sizes itself from the limits; requests == limits keeps Ray pods Guaranteed
            assert resources["requests"] == resources["limits"], f"{name} {where}"


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_pods_run_as_non_root_without_privileges(name: str, doc: dict[str, Any]) -> None:
    for where, container, pod in _containers(doc):
        pod_sc = pod.get("securityContext", {})
        sc = {**pod_sc, **container.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, f"{name} {where}: runAsNonRoot"
        assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, f"{name} {where}"
        assert sc.get("allowPrivilegeEscalation") is False, f"{name} {where}"
        assert not sc.get("privileged", False), f"{name} {where}"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name} {where}"
        assert not sc.get("capabilities", {}).get("add"), f"{name} {where}"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name} {where}"
        assert pod.get("automountServiceAccountToken") is False, f"{name} {where}"
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), f"{name} {where}"


def test_image_user_matches_manifests() -> None:
    users = re.findall(r"^USER\s+(\S+)", (K8S / "Dockerfile").read_text(), re.M)
    assert users, "k8s/Dockerfile must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER, so runAsNonRoot can check it"
    for _, doc in RAY_DOCS:
        for where, container, pod in _containers(doc):
            sc = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert sc["runAsUser"] == int(uid), where


def test_dockerfile_installs_like_the_makefile() -> None:
    text = (K8S / "Dockerfile").read_text()
    # the Ray project's image of the pinned Ray and Python 3.11, as the KubeRay samples use
    assert re.search(rf"^FROM rayproject/ray:{re.escape(_ray_pin())}-py311(-gpu|-cpu)?$", text, re.M)
    installs = re.findall(r"pip install -c constraints\.txt ([^\n\\&]+)", text)
    assert any(".[" in line for line in installs), "installs the project against constraints.txt"
    assert re.search(r"^COPY (--chown=\S+ )?constraints\.txt", text, re.M)
    assert re.search(r"^WORKDIR /app$", text, re.M)


def test_dockerignore_keeps_secrets_and_venv_out() -> None:
    lines = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", ".env", "**/*.pem"):
        assert needed in lines, f".dockerignore lacks {needed!r}"


def _manifest_and_config_files() -> list[Path]:
    return MANIFESTS + sorted((REPO / "configs").glob("*")) + [K8S / "Dockerfile"]


@pytest.mark.parametrize("path", _manifest_and_config_files(), ids=lambda p: p.name)
def test_no_inline_secrets(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path.name}: AWS access key id"
    assert "-----BEGIN" not in text, f"{path.name}: private key"
    assert "private_key" not in text, f"{path.name}: service-account key"
    if path.suffix != ".yaml" or path.parent != K8S:
        return
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{path.name}: inline Secret"
        for node in _walk(doc):
            for env in node.get("env", []) if isinstance(node.get("env"), list) else []:
                if CREDENTIAL_NAME.search(env["name"]):
                    assert "value" not in env, f"{path.name}: {env['name']} has an inline value"
                    assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_ray_pods_get_credentials_from_a_secret(name: str, doc: dict[str, Any]) -> None:
    for group, template in _pod_templates(doc):
        if group == "submitter":
            continue  # only submits the job: needs no data credentials
        for container in template["spec"]["containers"]:
            from_secret = [e for e in container.get("envFrom", []) if "secretRef" in e] + [
                e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
            ]
            assert from_secret, f"{name} {group}: object-storage credentials from a Secret"


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_dashboard_stays_inside_the_cluster(name: str, doc: dict[str, Any]) -> None:
    head = _cluster_spec(doc)["headGroupSpec"]
    assert head.get("serviceType") == "ClusterIP", f"{name}: head service must be ClusterIP"
    assert head.get("enableIngress", False) is False, f"{name}: no ingress"
    assert head.get("rayStartParams", {}).get("dashboard-host", "0.0.0.0") in ("0.0.0.0", "::")
    for _, other in _documents():
        assert other.get("kind") != "Ingress", "no Ingress for the dashboard"
        if other.get("kind") == "Service":
            assert other.get("spec", {}).get("type", "ClusterIP") == "ClusterIP"


def _ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """Custom resources of a group from rayStartParams (KubeRay's quoted JSON) or `resources`."""
    raw = group.get("rayStartParams", {}).get("resources")
    found: dict[str, float] = {}
    if raw is not None:
        text = raw.strip()
        if text.startswith('"') and text.endswith('"'):
            text = json.loads(text)
        found.update(json.loads(text))
    found.update({k: float(v) for k, v in group.get("resources", {}).items()})
    return found


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_gpu_trainer_group_and_autoscaled_gpu_explainer_group(name: str, doc: dict[str, Any]) -> None:
    groups = dict(_groups(doc))
    trainer, explainer = groups["trainer"], groups["explainer"]
    for group in (trainer, explainer):
        pod = group["template"]["spec"]
        for container in pod["containers"]:
            assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), name
    assert _ray_resources(explainer).get("explainer", 0) > 0, f"{name}: explainer resource"
    assert "explainer" not in _ray_resources(trainer)
    # the explainer group scales with the explainer pool (`--explainers auto`)
    assert _cluster_spec(doc)["enableInTreeAutoscaling"] is True
    assert explainer["minReplicas"] < explainer["maxReplicas"], name
    # the head runs no tasks, so explainers and reads cannot crowd the driver
    assert groups["head"]["rayStartParams"].get("num-cpus") == "0"


def test_rayjob_lifecycle() -> None:
    (job,) = [doc for _, doc in RAY_DOCS if doc["kind"] == "RayJob"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert isinstance(job["spec"]["ttlSecondsAfterFinished"], int)
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def _image_workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (K8S / "Dockerfile").read_text(), re.M)
    return workdirs[-1]


def _parse_entrypoint(entrypoint: str) -> Any:
    """Parse a `python -m reldrop.jobs.X ...` or `reldrop X ...` entrypoint with the real parser."""
    from reldrop.jobs.cli import COMMANDS

    argv = shlex.split(entrypoint)
    if argv[:2] == ["python", "-m"] and argv[2].startswith("reldrop.jobs."):
        module_name, args = argv[2], argv[3:]
        if module_name == "reldrop.jobs.cli":
            module_name, args = f"reldrop.jobs.{COMMANDS[args[0]]}", args[1:]
    elif argv[0] == "reldrop":
        module_name, args = f"reldrop.jobs.{COMMANDS[argv[1]]}", argv[2:]
    else:
        raise AssertionError(f"entrypoint is not a reldrop job: {entrypoint!r}")
    # files baked into the image at WORKDIR are the repository's files
    workdir = _image_workdir().rstrip("/") + "/"
    local = [str(REPO / a[len(workdir) :]) if a.startswith(workdir) else a for a in args]
    module = importlib.import_module(module_name)
    return module.parse_args(local)


def test_rayjob_entrypoint_parses_with_the_real_cli() -> None:
    (job,) = [doc for _, doc in RAY_DOCS if doc["kind"] == "RayJob"]
    args = _parse_entrypoint(job["spec"]["entrypoint"])
    assert args.config is not None and args.config.is_file()
    # the cluster layout and the job's own sizing agree
    groups = dict(_groups(job))
    gpus = sum(
        int(c["resources"]["limits"]["nvidia.com/gpu"]) * groups["trainer"]["replicas"]
        for c in groups["trainer"]["template"]["spec"]["containers"]
    )
    assert args.use_gpu and args.trainers == gpus
    # explainers use the resource the explainer pods advertise, autoscale up to what the
    # group's largest size holds, and fit a pod (CPUs left for the read tasks, GPUs shared)
    explainer = groups["explainer"]
    per_pod = _ray_resources(explainer)["explainer"]
    assert args.explainer_resource == "explainer" and args.explainers == "auto"
    assert args.explainers_max == per_pod * explainer["maxReplicas"]
    cpus = float(explainer["rayStartParams"]["num-cpus"])
    assert per_pod * args.explainer_cpus < cpus, "leave CPUs for the read tasks"
    pod_gpus = int(explainer["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert 0 < per_pod * args.explainer_gpus <= pod_gpus, "GPU explainers that fit their pod"
    assert str(args.train).startswith(("s3://", "gs://")), "cluster shards on object storage"
    assert args.test and args.ood_test, "a cluster run reports test and OOD accuracy"


# --- schema validation -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_pod_templates_validate_against_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed"
    )
    for group, template in _pod_templates(doc):
        resource = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata']['name']}-{group}"},
            "template": template,
        }
        try:
            kubernetes_validate.validate(resource, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name} {group}: {err.message} at {list(err.absolute_path)}")


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden, as `kubectl apply` (strict field
    validation) rejects them; the API server would otherwise prune a misspelt field silently."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(value) for value in schema]
    return schema


@functools.cache
def _load_crd(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-2 MB
    crd: dict[str, Any] = yaml.load(path.read_text(), Loader=loader)  # noqa: S506
    return crd


def _crd_schema(kind: str) -> dict[str, Any]:
    path = CRD_DIR / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(
            f"KubeRay CRD {path} not found: these tests need the shared/ folder beside the "
            "repository (../shared/kuberay-crds)"
        )
    crd = _load_crd(path)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=_ids(RAY_DOCS))
def test_validates_against_kuberay_crd(name: str, doc: dict[str, Any]) -> None:
    import jsonschema

    schema = _strict(_crd_schema(doc["kind"]))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_crd_validation_catches_a_misspelt_field() -> None:
    import jsonschema

    (job,) = [doc for _, doc in RAY_DOCS if doc["kind"] == "RayJob"]
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinish"] = bad["spec"].pop("shutdownAfterJobFinishes")
    schema = _strict(_crd_schema("RayJob"))
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))
