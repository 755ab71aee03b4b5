"""The admin port cannot slow the control plane: a thousand concurrent page loads leave an
Ingress edit fast and /healthz answering, and half-sent requests are cut off."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest

from kxds.admin import READ_TIMEOUT_SECONDS
from tests.builders import endpoint_slice, ingress, path, rule, service, split
from tests.conftest import Stack
from tests.e2e.harness import LOCAL, curl, wait_until

pytestmark = pytest.mark.e2e
NS = "ns"
COUNT = 300  # Ingresses, each with a long header so that /ingresses is a large page to render


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("admin-load"))
    try:
        port = stack.backends.start("echo")
        docs = [service("echo", NS, target=port), endpoint_slice("echo", [LOCAL], port, NS)]
        docs += [ingress(f"app-{n}", rule([f"app-{n}.example.com", *(f"alias-{k}.app-{n}.example.com" for k in range(20))],
                                           path(split("echo"), append={"X-Pad": "p" * 2000}))) for n in range(COUNT)]
        stack.plane.write("objects.yaml", docs)
        stack.plane.wait_ready(f"{NS}/app-{COUNT - 1}", timeout=60)
        yield stack
    finally:
        stack.close()


def served(port: int, host: str) -> bool:
    """One request through the gateway without a process start (curl's would blur the timing)."""
    connection = http.client.HTTPConnection(LOCAL, port, timeout=2)
    try:
        connection.request("GET", "/", headers={"Host": host})
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def storm(port: int, requests: int, done: threading.Event, results: list[int]) -> None:
    async def main() -> None:
        limits = aiohttp.TCPConnector(limit=requests)
        async with aiohttp.ClientSession(connector=limits, timeout=aiohttp.ClientTimeout(total=120)) as session:
            async def one() -> None:
                async with session.get(f"http://{LOCAL}:{port}/ingresses") as response:
                    await response.read()
                    results.append(response.status)

            await asyncio.gather(*(one() for _ in range(requests)), return_exceptions=True)

    asyncio.run(main())
    done.set()


def test_a_thousand_admin_requests_leave_an_edit_fast(loaded: Stack) -> None:
    stack = loaded
    statuses: list[int] = []
    done = threading.Event()
    thread = threading.Thread(target=storm, args=(stack.plane.admin_port, 1000, done, statuses))
    thread.start()
    try:
        time.sleep(0.3)  # the storm is under way
        health_started = time.monotonic()
        assert stack.plane.get("/healthz")[0] in (200, 503)
        health = time.monotonic() - health_started
        edited = time.monotonic()
        stack.plane.write("objects-edit.yaml", [ingress("edited", rule(["edited.example.com"], path(split("echo"), append={"X-Edit": "1"})))])
        wait_until(lambda: served(stack.ports.external, "edited.example.com"), timeout=10, interval=0.005, what="the edit")
        latency = time.monotonic() - edited
    finally:
        thread.join(timeout=180)
    assert done.is_set() and len(statuses) > 0
    assert set(statuses) <= {200, 503}  # served, or refused at once when too many at a time
    assert statuses.count(200) >= 64
    assert health < 0.5, health
    print(f"edit reached Envoy {latency:.3f}s after the write, /healthz {health:.3f}s, during 1,000 admin requests")
    assert latency < 0.5, latency


def test_half_sent_requests_are_cut_off(loaded: Stack) -> None:
    sockets = []
    for _ in range(200):
        conn = socket.create_connection((LOCAL, loaded.plane.admin_port), timeout=5)
        conn.sendall(b"GET /ingresses HTTP/1.1\r\nHost: kxds\r\n")  # and never the end of the headers
        sockets.append(conn)
    time.sleep(READ_TIMEOUT_SECONDS + 2)
    closed = 0
    for conn in sockets:
        conn.settimeout(1)
        try:
            conn.recv(1024)  # the server closed it (b""), or answered 408 first
            closed += 1
        except (TimeoutError, socket.timeout):
            pass  # still open: the server is waiting for the rest
        except OSError:
            closed += 1
        conn.close()
    assert closed == len(sockets)
    assert loaded.plane.get("/healthz")[0] == 200
