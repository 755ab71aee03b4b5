"""One Ingress that Envoy rejects harms no other, with a real Envoy and the default settings.

The culprit's virtual host carries a header Envoy's own validation refuses (20,000 bytes, over the
16 KiB HeaderValue limit). kxds's validator would refuse that itself, so the test-only switch
`KXDS_TEST_CORRUPT_HOST_PREFIX` plants it after translation — standing in for any check kxds lacks.
Envoy then rejects the whole route configuration with a message quoting its first few virtual
hosts, none of them the culprit's. kxds must find the culprit among what changed, hold out only
it, keep every other Ingress serving and updating, and take nothing else down after it is gone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, Traffic, curl, wait_until

pytestmark = pytest.mark.e2e
NS = "ns"
INNOCENTS = [f"innocent-{n}" for n in range(10)]


def host(name: str) -> str:
    return f"{name}.example.com"


# Kourier's layout over SotW (the culprit shares a route configuration with every other Ingress),
# and the scoped layout over delta (each Ingress has its own; the culprit shares a Service).
@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


LAYOUTS = {"kourier-sotw": {}, "scoped-delta": {"KXDS_ROUTE_LAYOUT": "scoped", "KXDS_TEST_DELTA": "1"}}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def culprit_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Stack]:
    for name in ("KXDS_ROUTE_LAYOUT", "KXDS_TEST_DELTA"):
        if name in LAYOUTS[request.param]:
            monkeypatch_module.setenv(name, LAYOUTS[request.param][name])
        else:
            monkeypatch_module.delenv(name, raising=False)
    stack = Stack(tmp_path_factory.mktemp("culprit"), env={"KXDS_TEST_CORRUPT_HOST_PREFIX": "culprit"})
    try:
        port = stack.backends.start("echo")
        for name in [*INNOCENTS, "late-0", "late-1", "late-2", "late-3"]:
            stack.plane.write(f"svc-{name}.yaml", [service(name, NS, target=port), endpoint_slice(name, [LOCAL], port, NS)])
        for name in INNOCENTS:
            stack.plane.write(f"ing-{name}.yaml", [ingress(name, rule([host(name)], path(split(name))))])
        for name in INNOCENTS:
            stack.plane.wait_ready(f"{NS}/{name}")
        yield stack
    finally:
        stack.close()


def rejected_route_updates(stack: Stack) -> int:
    """Route configuration updates the gateway refused (its NACKs, as kxds counts them)."""
    found = re.search(r'^kxds_xds_nacks_total\{type="RDS"\} (\S+)$', stack.plane.get("/metrics")[1].decode(), re.MULTILINE)
    return int(float(found.group(1))) if found else 0


def test_only_the_culprit_is_held_out_and_the_others_keep_serving_and_updating(culprit_stack: Stack) -> None:
    stack = culprit_stack
    # Requests to every innocent, in a loop, for as long as the culprit is being dealt with.
    with Traffic(stack.ports.external, [host(name) for name in INNOCENTS], 1) as watch:
        # The culprit arrives in one burst with four innocents: all five changed in the update
        # Envoy rejects, and its message names none of them.
        # The culprit routes to an innocent's Service.
        stack.plane.write("burst.yaml", [ingress(name, rule([host(name)], path(split("innocent-0" if name == "culprit" else name))))
                                         for name in ("late-0", "late-1", "culprit", "late-2", "late-3")])
        status = stack.plane.wait_status(f"{NS}/culprit", lambda s: s["reason"] == "EnvoyRejected", timeout=30)
        assert "a gateway rejected this Ingress's configuration" in status["message"]
        for name in ("late-0", "late-1", "late-2", "late-3"):
            stack.plane.wait_ready(f"{NS}/{name}", timeout=30)
            assert curl(stack.ports.external, host(name)).status == 200
        # Every other Ingress keeps updating while the culprit is present.
        stack.plane.write("ing-innocent-3.yaml", [ingress("innocent-3", rule([host("innocent-3")], path(split("innocent-3"), append={"X-After": "culprit"})))])
        wait_until(lambda: curl(stack.ports.external, host("innocent-3")).request_header("X-After") == "culprit", what="an edit while the culprit is held")
        stack.plane.wait_ready(f"{NS}/innocent-3")
    assert watch.sent > 0 and not watch.failures, watch.failures[:10]
    statuses = stack.plane.ingresses()
    held = [key for key, s in statuses.items() if s["reason"] == "EnvoyRejected"]
    assert held == [f"{NS}/culprit"], held
    assert curl(stack.ports.external, host("culprit")).status == 404
    nacks_while_present = rejected_route_updates(stack)
    assert 1 <= nacks_while_present <= 4, nacks_while_present  # found in log2(5) + 1 rounds, never a loop

    # The culprit is deleted: nothing stays down, and nothing was held for it but itself.
    stack.plane.remove("burst.yaml")
    stack.plane.write("burst.yaml", [ingress(name, rule([host(name)], path(split(name)))) for name in ("late-0", "late-1", "late-2", "late-3")])
    wait_until(lambda: f"{NS}/culprit" not in stack.plane.ingresses(), what="the culprit to be gone")
    for key, entry in stack.plane.ingresses().items():
        stack.plane.wait_ready(key)
    for name in [*INNOCENTS, "late-0", "late-3"]:
        assert curl(stack.ports.external, host(name)).status == 200
    assert rejected_route_updates(stack) == nacks_while_present
    log = stack.plane.log_path.read_text()
    holds = [json.loads(line) for line in log.splitlines() if '"ingress.rejected_by_gateway"' in line]
    assert [h["ingress"] for h in holds] == [f"{NS}/culprit"], holds


REFUSED_SHAPES = {
    "long-value": ({"append": {"X-Long": "v" * 20000}}, "spec.rules[0].http.paths[0].appendHeaders.X-Long", "value is 20000 bytes; Envoy accepts at most 16384"),
    "long-name": ({"append": {"X" * 20000: "v"}}, "spec.rules[0].http.paths[0].appendHeaders.", "header name is 20000 bytes"),
    "many-headers": ({"append": {f"X-{n}": "v" for n in range(1001)}}, "spec.rules[0].http.paths[0].appendHeaders", "1001 headers"),
    "absurd-timeout": ({"timeout": "100000000h"}, "spec.rules[0].http.paths[0].timeout", "longest timeout Envoy accepts"),
    "hop-by-hop": ({"append": {"Connection": "close"}}, "spec.rules[0].http.paths[0].appendHeaders.Connection", "hop-by-hop"),
    "control": ({"append": {"X-Ctl": "a\x01b"}}, "spec.rules[0].http.paths[0].appendHeaders.X-Ctl", "control characters"),
    "relative-path": ({"prefix": "api"}, "spec.rules[0].http.paths[0].path", "must start with '/'"),
    "huge-match": ({"headers": {"X-Match": "m" * 70000}}, "spec.rules[0].http.paths[0].headers.X-Match.exact", "70000 bytes"),
}


def test_shapes_envoy_would_refuse_are_refused_by_kxds_and_freeze_nothing(culprit_stack: Stack) -> None:
    stack = culprit_stack
    docs = []
    for name, (shape, _, _) in REFUSED_SHAPES.items():
        doc = ingress(name, rule([host(name)], path(split("innocent-0"), prefix=shape.get("prefix", ""), headers=shape.get("headers"), append=shape.get("append"))))
        if "timeout" in shape:
            doc["spec"]["rules"][0]["http"]["paths"][0]["timeout"] = shape["timeout"]
        docs.append(doc)
    rejected_before = rejected_route_updates(stack)
    stack.plane.write("refused.yaml", docs)
    for name, (_, field, problem) in REFUSED_SHAPES.items():
        status = stack.plane.wait_status(f"{NS}/{name}", lambda s: s["reason"] == "ReconcileIngressFailed")
        assert field in status["message"] and problem in status["message"], status["message"]
    # Nothing froze: an edit and a new Ingress still reach Envoy, and Envoy refused nothing.
    stack.plane.write("ing-innocent-5.yaml", [ingress("innocent-5", rule([host("innocent-5")], path(split("innocent-5"), append={"X-After": "refused"})))])
    wait_until(lambda: curl(stack.ports.external, host("innocent-5")).request_header("X-After") == "refused", what="an edit beside the refused Ingresses")
    stack.plane.write("fresh.yaml", [ingress("fresh", rule([host("fresh")], path(split("innocent-6"))))])
    stack.plane.wait_ready(f"{NS}/fresh")
    for name in INNOCENTS:
        assert curl(stack.ports.external, host(name)).status == 200
    assert rejected_route_updates(stack) == rejected_before
    stack.plane.remove("refused.yaml")
