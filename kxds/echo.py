"""The sample backend: answers every request with JSON describing it, like Knative's runtime image.

Speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port, and implements the Knative
probe handler (knative-ingress-contract.md §9.5) in front of everything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PROBE_HEADER = "k-network-probe"
HASH_HEADER = "k-network-hash"


def canonical(name: str) -> str:
    """Go's textproto canonical header name: `foo-bar-baz` → `Foo-Bar-Baz`."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def describe(scope: Scope, name: str, port: int) -> dict[str, Any]:
    headers: dict[str, list[str]] = {}
    host = ""
    for raw_name, raw_value in scope["headers"]:
        key, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        if key.lower() == "host":
            host = value
            continue
        headers.setdefault(canonical(key), []).append(value)
    query = scope.get("query_string", b"").decode("latin-1")
    path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
    major, _, minor = scope["http_version"].partition(".")
    return {
        "request": {
            "ts": datetime.now(timezone.utc).isoformat(),
            "uri": path + (f"?{query}" if query else ""),
            "host": host,
            "method": scope["method"],
            "headers": headers,
            "protoMajor": int(major),
            "protoMinor": int(minor or 0),
        },
        "server": {"name": name, "port": port},
    }


ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def knative_probe(app: ASGIApp) -> ASGIApp:
    """Knative's probe handler in front of an app (knative.dev/networking pkg/http/probe).

    `K-Network-Probe: probe` is answered here, echoing `K-Network-Hash`; any other request has
    `K-Network-Hash` removed and goes to the app.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["type"] == "http" and headers.get(PROBE_HEADER) == "probe":
            while (await receive()).get("more_body"):
                pass
            digest = headers.get(HASH_HEADER, "")
            if not digest:
                await respond(send, 400, b'a probe request must contain a non-empty "K-Network-Hash" header')
            else:
                await respond(send, 200, b"", [(b"k-network-hash", digest.encode())])
            return
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != HASH_HEADER.encode()]
        await app(scope, receive, send)

    return wrapped


def echo_app(name: str, port: int) -> ASGIApp:
    """Knative's `runtime` test image: 200 with JSON describing the request, for any request."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass  # drain the request body
        body = json.dumps(describe(scope, name, port), indent=2).encode() + b"\n"
        no_cache = [(b"cache-control", b"no-cache, no-store, must-revalidate"), (b"pragma", b"no-cache"), (b"expires", b"0")]
        await respond(send, 200, body, [(b"content-type", b"application/json"), *no_cache])

    return knative_probe(app)


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


async def serve_asgi(app: ASGIApp, host: str, port: int, stop: asyncio.Event | None = None, *, certfile: str = "", keyfile: str = "") -> None:
    """Serve on host:port until `stop`; with a certificate, TLS (ALPN h2 and http/1.1) instead."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    if certfile:
        config.certfile, config.keyfile = certfile, keyfile
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    trigger = (stop or asyncio.Event()).wait
    await serve(app, config, shutdown_trigger=trigger)  # type: ignore[arg-type]


async def serve_echo(host: str, port: int, name: str = "", stop: asyncio.Event | None = None) -> None:
    await serve_asgi(echo_app(name or f"echo-{port}", port), host, port, stop)
