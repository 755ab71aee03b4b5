"""A real Envoy rejects configuration: it keeps its last good one, kxds logs the rejection once
with the resource names, holds out the Ingress at fault with a reason, keeps updating the others,
and never resends the rejected version.

The rejection is real (Envoy's own validation refuses a negative connect timeout); what makes
kxds produce it is the test-only `--test-corrupt-cluster` switch, since kxds never produces one
otherwise (tests/unit/test_hostile_input.py batches generated configurations through Envoy).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, curl, wait_until

pytestmark = pytest.mark.e2e
NS = "nack"


def metric(stack: Stack, name: str) -> float:
    text = stack.plane.get("/metrics")[1].decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def nack_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("nack"), env={"KXDS_TEST_CORRUPT_CLUSTER": f"{NS}/bad"})
    try:
        port = stack.backends.start("echo")
        stack.plane.write("backends.yaml", [
            *(doc for name in ("good", "bad", "later") for doc in (service(name, NS, target=port), endpoint_slice(name, [LOCAL], port, NS))),
        ])
        stack.plane.write("good.yaml", [ingress("good", rule(["good.nack.example.com"], path(split("good", namespace=NS))), namespace=NS)])
        stack.plane.wait_ready(f"{NS}/good")
        yield stack
    finally:
        stack.close()


def test_a_rejected_ingress_is_held_out_and_the_others_keep_updating(nack_stack: Stack) -> None:
    stack = nack_stack
    stack.plane.write("bad.yaml", [ingress("victim", rule(["victim.nack.example.com"], path(split("bad", namespace=NS))), namespace=NS)])

    status = stack.plane.wait_status(f"{NS}/victim", lambda s: s["reason"] == "EnvoyRejected")
    assert not status["ready"]
    assert "a gateway rejected this Ingress's configuration" in status["message"] and f"{NS}/bad" in status["message"]
    # Envoy refused the update and kept serving what it had.
    wait_until(lambda: stack.gateway.stat("cluster_manager.cds.update_rejected") >= 1, what="Envoy's CDS rejection")
    assert curl(stack.ports.external, "good.nack.example.com").status == 200
    assert curl(stack.ports.external, "victim.nack.example.com").status == 404

    # Every other Ingress keeps updating: a change and a new one reach Envoy and become ready.
    stack.plane.write("good.yaml", [ingress("good", rule(["good.nack.example.com"], path(split("good", namespace=NS), append={"X-After": "nack"})), namespace=NS)])
    wait_until(lambda: curl(stack.ports.external, "good.nack.example.com").request_header("X-After") == "nack", what="the update after a NACK")
    stack.plane.write("later.yaml", [ingress("later", rule(["later.nack.example.com"], path(split("later", namespace=NS))), namespace=NS)])
    stack.plane.wait_ready(f"{NS}/later")
    stack.plane.wait_ready(f"{NS}/good")
    assert curl(stack.ports.external, "later.nack.example.com").status == 200

    # Logged once, with the resource names; the rejected version is never sent again.
    log = stack.plane.log_path.read_text()
    nacks = [line for line in log.splitlines() if '"xds.nack"' in line]
    assert len(nacks) == 1 and f"{NS}/bad" in nacks[0]
    assert metric(stack, 'kxds_xds_nacks_total{type="CDS"}') == 1.0
    responses = metric(stack, 'kxds_xds_responses_total{type="CDS"}')
    time.sleep(2)
    assert metric(stack, 'kxds_xds_responses_total{type="CDS"}') == responses
    assert stack.gateway.stat("cluster_manager.cds.update_rejected") == 1

    # The Ingress changes: it is tried again (and, still corrupted by the switch, held again).
    stack.plane.write("bad.yaml", [ingress("victim", rule(["victim2.nack.example.com"], path(split("bad", namespace=NS))), namespace=NS)])
    wait_until(lambda: stack.gateway.stat("cluster_manager.cds.update_rejected") == 2, what="the retry after a change")
    stack.plane.wait_status(f"{NS}/victim", lambda s: s["reason"] == "EnvoyRejected" and "victim2.nack.example.com" in s["hosts"])
    stack.plane.wait_ready(f"{NS}/good")
