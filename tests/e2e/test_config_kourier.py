"""config-kourier end to end: every key changes what a real Envoy does, live, without a restart.

Each test writes the whole ConfigMap it needs and waits for the behaviour, so the order of the
tests does not matter. Gateway-wide settings would change every other test's configuration, so
this module runs its own kxds (with KOURIER_HTTPOPTION_DISABLED set) and Envoy.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from tests.builders import config_map, endpoint_slice, ingress, path, rule, service, split
from tests.conformance import backends as conformance_backends
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, Reply, curl, free_port, wait_until

pytestmark = pytest.mark.e2e
NS = "cfg"
HOST = "hello.cfg.example.com"
OPEN_HOST = "open.cfg.example.com"
SLOW_HOST = "slow.cfg.example.com"
REDIRECTED_HOST = "redirected.cfg.example.com"


class AuthzServer:
    """Envoy's ext-authz gRPC API: allows a request carrying `x-allow: yes`, records every check."""

    def __init__(self) -> None:
        self.checks: list[tuple[str, dict[str, str]]] = []
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(self._Servicer(self), self.server)
        self.server.add_insecure_port(f"{LOCAL}:{self.port}")
        self.server.start()

    class _Servicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
        def __init__(self, outer: AuthzServer) -> None:
            self.outer = outer

        def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
            http = request.attributes.request.http
            self.outer.checks.append((http.host, dict(request.attributes.context_extensions)))
            allowed = http.headers.get("x-allow") == "yes"
            return external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0 if allowed else 7))

    def hosts(self) -> set[str]:
        return {h.split(":")[0] for h, _ in self.checks}


class Collector:
    """An OTLP/HTTP trace receiver: the service names of the spans posted to /v1/traces."""

    def __init__(self) -> None:
        self.services: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                export = trace_service_pb2.ExportTraceServiceRequest.FromString(self._body())
                for spans in export.resource_spans:
                    names = [a.value.string_value for a in spans.resource.attributes if a.key == "service.name"]
                    # xds-protos ships an older OTLP schema that names the span groups differently.
                    groups = spans.instrumentation_library_spans
                    outer.services += names * sum(len(g.spans) for g in groups)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() != "chunked":
                    return self.rfile.read(int(self.headers.get("content-length", 0)))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOCAL, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class ConfigStack:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.authz = AuthzServer()
        self.collector = Collector()
        self.pids = (stack.plane.process.pid, stack.gateway.process.pid)
        self.config: dict[str, str] | None = None

    def configure(self, **data: str) -> None:
        """Write config-kourier and wait until the gateway has applied the configuration it makes."""
        if data == self.config:
            return
        self.config = data
        before = self.stack.plane.snapshot_serial()
        self.stack.plane.write("config-kourier.yaml", [config_map("config-kourier", data)])
        self.stack.plane.wait_synced(after=before)

    def get(self, host: str = HOST, *, headers: tuple[str, ...] = (), path_: str = "/") -> Reply:
        return curl(self.stack.ports.external, host, path_, headers=headers)

    def listener(self, port: int) -> str:
        return self.stack.gateway.admin(f"/config_dump?resource=dynamic_listeners&name_regex=listener_{port}")

    def envoy_log(self) -> str:
        return self.stack.gateway.log_path.read_text(errors="replace")

    def assert_not_restarted(self) -> None:
        assert (self.stack.plane.process.poll(), self.stack.gateway.process.poll()) == (None, None)
        assert (self.stack.plane.process.pid, self.stack.gateway.process.pid) == self.pids


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfigStack]:
    stack = Stack(tmp_path_factory.mktemp("config-kourier"), env={"KOURIER_HTTPOPTION_DISABLED": "true"})
    env = ConfigStack(stack)
    try:
        _publish_objects(stack)
        yield env
    finally:
        env.authz.server.stop(0)
        env.collector.server.shutdown()
        env.collector.server.server_close()
        stack.close()


def _publish_objects(stack: Stack) -> None:
    echo = stack.backends.start("echo")
    slow = stack.backends.start("slow", conformance_backends.timeout)
    open_ingress = ingress("open", rule([OPEN_HOST], path(split("echo", namespace=NS))), namespace=NS)
    open_ingress["metadata"]["annotations"]["kourier.knative.dev/disable-extauthz"] = "true"
    labelled = ingress("hello", rule([HOST], path(split("echo", namespace=NS))), namespace=NS)
    labelled["metadata"]["labels"] = {"serving.knative.dev/service": "hello"}
    stack.plane.write("objects.yaml", [
        service("echo", NS, target=echo), endpoint_slice("echo", [LOCAL], echo, NS),
        service("slow", NS, target=slow), endpoint_slice("slow", [LOCAL], slow, NS),
        labelled,
        open_ingress,
        ingress("slow", rule([SLOW_HOST], path(split("slow", namespace=NS))), namespace=NS),
        ingress("redirected", rule([REDIRECTED_HOST], path(split("echo", namespace=NS))), namespace=NS, httpOption="Redirected"),
    ])
    for name in ("hello", "open", "slow", "redirected"):
        stack.plane.wait_ready(f"{NS}/{name}")


def test_access_log_follows_the_template_and_can_be_switched_off(cfg: ConfigStack) -> None:
    cfg.configure(**{"service-access-log-template": "kxds-access %REQ(:AUTHORITY)% %RESPONSE_CODE%\n"})

    def logged() -> bool:
        cfg.get()
        return f"kxds-access {HOST} 200" in cfg.envoy_log()

    wait_until(logged, what="the templated access log line")
    cfg.configure(**{"enable-service-access-logging": "false"})
    wait_until(lambda: "access_log" not in cfg.listener(cfg.stack.ports.external), what="the access log to leave the listener")
    assert cfg.get(path_="/after-off").status == 200
    time.sleep(1.5)  # Envoy flushes file access logs every second
    assert "/after-off" not in cfg.envoy_log()
    cfg.assert_not_restarted()


def test_server_header_removed_live_and_an_invalid_value_keeps_the_previous_one(cfg: ConfigStack) -> None:
    cfg.configure()
    wait_until(lambda: cfg.get().headers.get("server") == "envoy", what="Envoy's server header")
    cfg.configure(**{"disable-envoy-server-header": "true"})
    wait_until(lambda: cfg.get().headers.get("server") != "envoy", what="the server header to pass through")

    # A typo alongside a valid change: the valid one applies, the typo keeps the previous value.
    cfg.configure(**{"disable-envoy-server-header": "maybe", "service-access-log-template": "kxds-kept %REQ(:AUTHORITY)%\n"})

    def applied() -> bool:
        cfg.get()
        return f"kxds-kept {HOST}" in cfg.envoy_log()

    wait_until(applied, what="the valid key of the same change")
    assert cfg.get().headers.get("server") != "envoy"
    log = cfg.stack.plane.log_path.read_text()
    assert "ConfigMap config-kourier: data.disable-envoy-server-header: invalid value 'maybe'" in log
    cfg.assert_not_restarted()


def test_remote_address_and_trusted_hops(cfg: ConfigStack) -> None:
    cfg.configure(**{"use-remote-address": "true", "trusted-hops-count": "1"})

    def external_address() -> str | None:
        return cfg.get(headers=("X-Forwarded-For: 203.0.113.7",)).request_header("X-Envoy-External-Address")

    # One trusted hop: the address the last proxy (curl, claiming to be one) saw is the client's.
    wait_until(lambda: external_address() == "203.0.113.7", what="the trusted hop's client address")
    cfg.configure(**{"use-remote-address": "true"})
    wait_until(lambda: external_address() == LOCAL, what="the peer address with no trusted hops")


def test_stream_idle_timeout(cfg: ConfigStack) -> None:
    cfg.configure()
    assert cfg.get(SLOW_HOST, path_="/?initialTimeout=1500").status == 200  # Kourier's default: no idle timeout
    cfg.configure(**{"stream-idle-timeout": "500ms"})
    wait_until(lambda: "stream_idle_timeout" in cfg.listener(cfg.stack.ports.external), what="the idle timeout on the listener")
    reply = cfg.get(SLOW_HOST, path_="/?initialTimeout=1500")
    assert (reply.status, reply.body) == (504, b"stream timeout")


def test_listen_ip_addresses_serve_ipv4_and_ipv6(cfg: ConfigStack) -> None:
    port = cfg.stack.ports.external

    def over_ipv6() -> int:
        out = subprocess.run(["curl", "-sS", "-g", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                              "-H", f"Host: {HOST}", f"http://[::1]:{port}/"], capture_output=True, check=False)
        return int(out.stdout or 0)

    cfg.configure(**{"listen-ip-addresses": "127.0.0.1,::1"})
    wait_until(lambda: over_ipv6() == 200, what="the listener on ::1")
    assert cfg.get().status == 200
    # An invalid list is reported and the previous addresses stay.
    cfg.configure(**{"listen-ip-addresses": "127.0.0.1,not-an-ip", "service-access-log-template": "kxds-ipv6 %REQ(:AUTHORITY)%\n"})
    wait_until(lambda: cfg.get().status == 200 and f"kxds-ipv6 {HOST}" in cfg.envoy_log(), what="the valid key of the same change")
    assert over_ipv6() == 200
    assert "'not-an-ip' is not an IPv4 or IPv6 address" in cfg.stack.plane.log_path.read_text()
    cfg.configure()
    wait_until(lambda: over_ipv6() == 0, what="the ::1 address to go")


def test_proxy_protocol(cfg: ConfigStack) -> None:
    cfg.configure(**{"enable-proxy-protocol": "true"})
    wait_until(lambda: "proxy_protocol" in cfg.listener(cfg.stack.ports.external), what="the proxy protocol listener filter")
    reply = curl(cfg.stack.ports.external, HOST, options=["--haproxy-protocol"])
    assert reply.status == 200
    assert reply.request_header("X-Envoy-External-Address") == LOCAL  # use_remote_address comes with it
    with pytest.raises(RuntimeError, match="curl failed"):
        cfg.get()  # no PROXY header: the connection is refused
    # The internal and probe listeners are reached directly, never through a proxy.
    assert curl(cfg.stack.ports.internal, HOST).status == 200
    cfg.configure()
    wait_until(lambda: "proxy_protocol" not in cfg.listener(cfg.stack.ports.external), what="the filter to go")
    wait_until(lambda: cfg.get().status == 200, what="plain connections again")


def test_ext_authz_with_a_per_ingress_opt_out(cfg: ConfigStack) -> None:
    cfg.configure(**{"extauthz-host": f"{LOCAL}:{cfg.authz.port}", "extauthz-protocol": "grpc"})
    wait_until(lambda: cfg.get().status == 403, what="ext-authz to deny")
    assert cfg.get(headers=("x-allow: yes",)).status == 200
    host, context = next(c for c in cfg.authz.checks if c[0].startswith(HOST))
    assert context == {"client": "kourier", "visibility": "ExternalIP", "serving.knative.dev/service": "hello"}
    # kourier.knative.dev/disable-extauthz: the Ingress is served without asking.
    assert cfg.get(OPEN_HOST).status == 200
    assert OPEN_HOST not in cfg.authz.hosts()
    # The gateway's own readiness probe never depends on the authorization service.
    assert curl(cfg.stack.ports.internal, "internalkourier", "/ready").status == 200
    assert "internalkourier" not in cfg.authz.hosts()
    cfg.configure()
    wait_until(lambda: cfg.get().status == 200, what="ext-authz to be switched off")


def test_tracing_exports_spans_over_otlp_http(cfg: ConfigStack) -> None:
    cfg.configure(**{
        "tracing-endpoint": f"http://{LOCAL}:{cfg.collector.port}/v1/traces",
        "tracing-protocol": "http/protobuf",
        "tracing-service-name": "kxds-e2e",
    })
    wait_until(lambda: "opentelemetry" in cfg.listener(cfg.stack.ports.external), what="the tracer on the listener")

    def exported() -> bool:
        for _ in range(5):
            cfg.get()
        return "kxds-e2e" in cfg.collector.services

    wait_until(exported, timeout=30, interval=1.0, what="spans at the collector")
    cfg.configure()


def test_httpoption_disabled_by_environment(cfg: ConfigStack) -> None:
    # KOURIER_HTTPOPTION_DISABLED is set for this kxds: Redirected is served as plain HTTP.
    assert cfg.get(REDIRECTED_HOST).status == 200
