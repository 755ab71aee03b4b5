"""deploy/, Dockerfile and docker-compose.yml, validated offline (no cluster and no Docker here)."""

from __future__ import annotations

import json
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kxds.bootstrap import XdsClientPki, render_bootstrap, render_bootstrap_configmap
from kxds.settings import DEFAULT_GATEWAY_PKI_DIR
from tests.certificates import write_gateway_bundle
from kxds.envoy_process import envoy_binary

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.34.0"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


@pytest.mark.parametrize(("where", "doc"), manifests(), ids=[w for w, _ in manifests()])
def test_manifests_match_the_kubernetes_schemas(where: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


def test_names_and_ports_are_kouriers() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    assert docs[("Service", "net-kourier-controller")]["spec"]["ports"][0] == {"name": "grpc-xds", "port": 18000, "targetPort": 18000}
    assert [(p["port"], p["targetPort"]) for p in docs[("Service", "kourier")]["spec"]["ports"]] == [(80, 8080), (443, 8443)]
    assert [(p["port"], p["targetPort"]) for p in docs[("Service", "kourier-internal")]["spec"]["ports"]] == [(80, 8081), (443, 8444)]
    assert docs[("Deployment", "net-kourier-controller")]["spec"]["replicas"] == 2
    assert ("PodDisruptionBudget", "3scale-kourier-gateway-pdb") in docs
    assert all(d["metadata"].get("labels", {}).get("networking.knative.dev/ingress-provider") == "kourier" for d in docs.values())


def test_rbac_is_least_privilege() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in manifests()}
    granted = {(g, r, v) for rule in docs[("ClusterRole", "net-kourier")]["rules"]
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    writes = {(g, r, v) for g, r, v in granted if v not in ("get", "list", "watch")}
    assert writes == {("networking.internal.knative.dev", "ingresses/status", "update"), ("networking.internal.knative.dev", "ingresses/status", "patch"),
                      ("", "events", "create"), ("", "events", "patch")}
    assert not any("*" in item for item in granted)
    # kxds's own CA and the gateways' bundle: Secrets created in two namespaces, one updated by name.
    assert docs[("Role", "kxds-xds-ca")]["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    assert docs[("Role", "kxds-gateway-xds")]["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["kxds-gateway-xds"], "verbs": ["update"]},
    ]
    lease_rules = docs[("Role", "net-kourier-leader-election")]["rules"]
    assert lease_rules == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch", "update"]}]


def test_containers_run_as_non_root() -> None:
    for _, doc in manifests():
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                context = container["securityContext"]
                assert context["runAsNonRoot"] and context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    assert "USER 65532:65532" in dockerfile and 'ENTRYPOINT ["kxds"]' in dockerfile


def test_generated_bootstraps_are_current_and_accepted_by_envoy(tmp_path: Path) -> None:
    gateway = render_bootstrap_configmap("kourier-system", "kourier-bootstrap", "net-kourier-controller.knative-serving:18000", 9901, stats_port=9000,
                                         tls=XdsClientPki(directory=DEFAULT_GATEWAY_PKI_DIR))
    assert (DEPLOY / "gateway-bootstrap.yaml").read_text() == gateway, "regenerate with kxds bootstrap --configmap"
    compose = (DEPLOY / "compose" / "envoy-bootstrap.yaml").read_text()
    assert compose.split("\n", 1)[1] == render_bootstrap("kxds:18000", 9901, tls=XdsClientPki(directory="/pki/gateway")), "regenerate with kxds bootstrap"
    # Envoy checks the bundle exists: validate against one at a local path instead of the mounts.
    bundle = str(write_gateway_bundle(tmp_path / "pki"))
    for name, text, mount in (("gateway", yaml.safe_load(gateway)["data"]["envoy-bootstrap.yaml"], DEFAULT_GATEWAY_PKI_DIR), ("compose", compose, "/pki/gateway")):
        assert f"{mount}/sds.yaml" in text
        (tmp_path / f"{name}.yaml").write_text(text.replace(mount, bundle))
        result = subprocess.run([envoy_binary(), "--mode", "validate", "--config-path", str(tmp_path / f"{name}.yaml")],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec() -> None:
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.validate(compose, schema)
    assert compose["services"]["hello-00001"]["network_mode"] == "service:envoy"
    assert "./examples:/examples:ro" in compose["services"]["kxds"]["volumes"]


def test_examples_match_the_knative_ingress_crd() -> None:
    crd = yaml.safe_load((ROOT / "tests" / "fixtures" / "knative-ingress-crd.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in yaml.safe_load_all((ROOT / "examples" / "hello-ingress.yaml").read_text()):
        jsonschema.validate(doc, schema)


def test_kind_script_is_valid_bash() -> None:
    assert subprocess.run(["bash", "-n", str(DEPLOY / "kind.sh")], check=False).returncode == 0
