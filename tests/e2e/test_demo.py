"""`kxds run`, the demo behind the README's first command, on free ports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import curl, free_port, wait_until

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).parents[2] / "examples"


def test_demo_serves_the_examples(tmp_path: Path) -> None:
    source = tmp_path / "examples"
    shutil.copytree(EXAMPLES, source)
    echo_ports = {"8001": free_port(), "8002": free_port()}
    backends = source / "hello-backends.yaml"
    docs = list(yaml.safe_load_all(backends.read_text()))
    for doc in docs:
        if doc["kind"] == "EndpointSlice":
            doc["ports"][0]["port"] = echo_ports[str(doc["ports"][0]["port"])]
    backends.write_text(yaml.safe_dump_all(docs))
    external, internal, probe, admin = free_port(), free_port(), free_port(), free_port()
    args = [
        sys.executable, "-m", "kxds", "run", "--source", str(source),
        "--xds-address", f"127.0.0.1:{free_port()}", "--admin-address", f"127.0.0.1:{admin}",
        "--envoy-admin-port", str(free_port()), "--echo-ports", ",".join(str(p) for p in echo_ports.values()),
        "--listen-address", "127.0.0.1", "--external-http-port", str(external),
        "--internal-http-port", str(internal), "--probe-http-port", str(probe),
    ]
    log = tmp_path / "demo.log"
    with open(log, "wb") as out:
        demo = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "Stop with Ctrl-C." in log.read_text(), timeout=30, what="the demo instructions")
            text = log.read_text()
            assert f"curl -s -H 'Host: hello.default.example.com' http://127.0.0.1:{external}/" in text
            reply = wait_until(lambda: (r := curl(external, "hello.default.example.com")).status == 200 and r, timeout=20, what="the demo route")
            assert reply.request_header("Knative-Serving-Namespace") == "default"
            canary = curl(external, "hello.default.example.com", headers=["Knative-Serving-Tag: canary"])
            assert canary.request_header("Knative-Serving-Revision") == "hello-00002"
            assert canary.json()["server"]["port"] == echo_ports["8002"]
            assert curl(internal, "hello.default").status == 200
            assert curl(external, "hello.default").status == 404
        finally:
            demo.terminate()
            assert demo.wait(timeout=15) == 0
