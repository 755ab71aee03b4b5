"""Files an attacker or a broken tool could leave in the source directory: each fails alone, with
a log line naming it, kxds's memory stays where it was, the other Ingresses keep serving and
updating, and kxds starts normally while the files are still there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kxds.settings import DEFAULT_INGRESS_CLASS
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.e2e.harness import LOCAL, Backends, ControlPlane, Gateway, ListenerPorts, curl, rss_mib, wait_until

pytestmark = pytest.mark.e2e

HEADER = f"""apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata:
  namespace: ns
  annotations: {{networking.knative.dev/ingress.class: {DEFAULT_INGRESS_CLASS}}}
"""


def alias_bomb() -> str:
    """Under 1 KB of YAML that stands for 10^9 hosts once expanded."""
    lines = ['  l0: &l0 ["a.example.com","a.example.com","a.example.com","a.example.com","a.example.com",'
             '"a.example.com","a.example.com","a.example.com","a.example.com","a.example.com"]']
    for level in range(1, 9):
        lines.append(f"  l{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 10) + "]")
    body = "\n".join(lines)
    return HEADER + "  name: bomb\nspec:\n" + body + "\n  rules:\n  - hosts: *l8\n    http: {paths: [{splits: [{serviceNamespace: ns, serviceName: echo, servicePort: 80}]}]}\n"


def deep_spec(levels: int = 600) -> str:
    """An unknown spec field nested 600 levels deep (about 2 KB)."""
    return HEADER + "  name: deep\nspec:\n  x: " + "[" * levels + "]" * levels + "\n"


def deep_json(levels: int = 100_000) -> str:
    """A 200 KB JSON document nested 100,000 levels deep."""
    return "[" * levels + "]" * levels


class Env:
    def __init__(self, workdir: Path) -> None:
        self.workdir, self.ports, self.backends = workdir, ListenerPorts(), Backends()
        self.plane = ControlPlane(workdir, self.ports)
        self.gateway = Gateway(workdir, self.plane)
        port = self.backends.start("echo")
        self.plane.write("innocent.yaml", [service("echo", target=port), endpoint_slice("echo", [LOCAL], port),
                                           ingress("innocent", rule(["innocent.example.com"], path(split("echo"))))])
        self.plane.wait_ready("ns/innocent")

    def close(self) -> None:
        self.gateway.stop()
        self.plane.stop()
        self.backends.close()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    e = Env(tmp_path_factory.mktemp("hostile-files"))
    yield e
    e.close()


def test_hostile_files_fail_alone_and_cost_no_memory(env: Env) -> None:
    plane = env.plane
    before = rss_mib(plane.process.pid)
    hostile = {"bomb.yaml": alias_bomb(), "deep.yaml": deep_spec(), "deep.json": deep_json()}
    assert len(hostile["bomb.yaml"]) < 1024 and len(hostile["deep.yaml"]) < 2048 and len(hostile["deep.json"]) == 200_000
    for name, text in hostile.items():
        (plane.source / name).write_text(text)
    log = lambda: plane.log_path.read_text()  # noqa: E731
    wait_until(lambda: all(n in log() for n in hostile), timeout=20, what="a log line naming each hostile file")
    assert "counting what its YAML aliases repeat" in log() and "nested deeper than 64 levels" in log() and "nested too deeply to parse" in log()
    assert plane.process.poll() is None
    assert rss_mib(plane.process.pid) - before < 50
    # The others keep serving and updating.
    assert curl(env.ports.external, "innocent.example.com").status == 200
    plane.write("next.yaml", [ingress("next", rule(["next.example.com"], path(split("echo"))))])
    plane.wait_ready("ns/next")
    assert curl(env.ports.external, "next.example.com").status == 200
    assert "ns/bomb" not in plane.ingresses() or not plane.ingresses()["ns/bomb"]["ready"]


def test_kxds_starts_normally_with_the_hostile_files_present(env: Env) -> None:
    plane = env.plane
    for name, text in {"bomb.yaml": alias_bomb(), "deep.yaml": deep_spec(), "deep.json": deep_json()}.items():
        (plane.source / name).write_text(text)
    restarted = ControlPlane(env.workdir, env.ports, log_name="kxds-restarted.log")  # same source directory
    try:
        assert restarted.process.poll() is None
        statuses = restarted.ingresses()
        assert "ns/innocent" in statuses
        assert rss_mib(restarted.process.pid) < 200
    finally:
        restarted.stop()
    assert json.loads(plane.get("/gateways")[1])["gateways"]  # the first kxds is untouched
