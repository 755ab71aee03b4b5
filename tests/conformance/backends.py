"""Knative's conformance test images, re-implemented as ASGI apps (conformance-cases.md Part C).

Each is served by hypercorn (HTTP/1.1, h2c with prior knowledge, WebSocket) behind the Knative
probe handler. `runtime` is `kxds echo` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import aiohttp

from kxds.echo import ASGIApp, Receive, Scope, Send, echo_app, knative_probe, respond

Factory = Callable[[str, int], ASGIApp]
runtime: Factory = echo_app


async def _drain(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def timeout(name: str, port: int) -> ASGIApp:
    """Sleeps `initialTimeout` ms, flushes 200 headers, sleeps `timeout` ms, then writes the body."""

    def millis(query: dict[str, list[str]], key: str) -> int:
        try:
            return int(query.get(key, ["0"])[0])
        except ValueError:
            return 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await _drain(receive)
        query = parse_qs(scope["query_string"].decode())
        await asyncio.sleep(millis(query, "initialTimeout") / 1000)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
        await send({"type": "http.response.body", "body": b"", "more_body": True})  # flush the headers now
        slept = millis(query, "timeout")
        await asyncio.sleep(slept / 1000)
        await send({"type": "http.response.body", "body": f"Slept for {slept} milliseconds".encode()})

    return knative_probe(app)


def retry(name: str, port: int) -> ASGIApp:
    """503 for the first non-probe request since start, 200 afterwards."""
    count = 0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal count
        await _drain(receive)
        seen, count = count, count + 1
        await respond(send, 503 if seen == 0 else 200, f"Retry {seen}".encode())

    return knative_probe(app)


def wsserver(suffix: str) -> Factory:
    """Echoes every WebSocket message, with ` <suffix>` appended when a suffix is set."""

    def factory(name: str, port: int) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                await _drain(receive)
                headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
                if headers.get("user-agent", "").startswith("kube-probe/") or "k-kubelet-probe" in headers:
                    await respond(send, 200, b"")
                else:
                    await respond(send, 400, b"Bad Request: missing 'Upgrade: websocket' header")
                return
            if (await receive())["type"] != "websocket.connect":
                return
            await send({"type": "websocket.accept"})
            while (message := await receive())["type"] == "websocket.receive":
                text, data = message.get("text"), message.get("bytes")
                if text is not None:
                    await send({"type": "websocket.send", "text": f"{text} {suffix}" if suffix else text})
                elif data is not None:
                    await send({"type": "websocket.send", "bytes": data + f" {suffix}".encode() if suffix else data})

        return knative_probe(app)

    return factory


# -- gRPC: ping.PingService over HTTP/2, with the framing written out by hand ---------------


def encode_ping(text: str) -> bytes:
    """`message Request/Response { string msg = 1; }` in protobuf wire format."""
    data = text.encode()
    if not data:
        return b""
    length, varint = len(data), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return b"\x0a" + bytes(varint) + data


def decode_ping(message: bytes) -> str:
    text, i = "", 0
    while i < len(message):
        tag = message[i]
        i += 1
        length = shift = 0
        while True:
            byte = message[i]
            i += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag == 0x0A:
            text = message[i : i + length].decode()
        i += length
    return text


def _frame(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def grpc_ping(suffix: str) -> Factory:
    def factory(name: str, port: int) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            if scope.get("http_version") != "2" or headers.get("content-type") != "application/grpc":
                await _drain(receive)
                await respond(send, 200, b"")
                return
            await send({"type": "http.response.start", "status": 200, "trailers": True,
                        "headers": [(b"content-type", b"application/grpc")]})
            buffer, more = b"", True
            while more:
                message = await receive()
                buffer += message.get("body", b"")
                more = bool(message.get("more_body"))
                while len(buffer) >= 5 and len(buffer) >= 5 + int.from_bytes(buffer[1:5], "big"):
                    size = int.from_bytes(buffer[1:5], "big")
                    request, buffer = buffer[5 : 5 + size], buffer[5 + size :]
                    reply = _frame(encode_ping(decode_ping(request) + suffix))
                    await send({"type": "http.response.body", "body": reply, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await send({"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False})

        return knative_probe(app)

    return factory


# -- httpproxy: forwards to the internal gateway with the Host rewritten ---------------------

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
                        "transfer-encoding", "upgrade", "host", "content-length"})


def httpproxy(target_host: str, gateway: str) -> Factory:
    def factory(name: str, port: int) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            body = await _drain(receive)
            query = scope["query_string"].decode()
            url = f"http://{gateway}{scope['path']}" + (f"?{query}" if query else "")
            headers: dict[str, Any] = {k.decode(): v.decode() for k, v in scope["headers"] if k.decode().lower() not in HOP_BY_HOP}
            headers["Host"] = target_host
            client = scope.get("client")
            if client:
                forwarded = headers.get("x-forwarded-for")
                headers["X-Forwarded-For"] = f"{forwarded}, {client[0]}" if forwarded else client[0]
            try:
                async with aiohttp.ClientSession(auto_decompress=False) as session, session.request(
                    scope["method"], url, headers=headers, data=body, allow_redirects=False
                ) as upstream:
                    content = await upstream.read()
                    passed = [(k.encode(), v.encode()) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP]
                await respond(send, upstream.status, content, passed)
            except aiohttp.ClientError as exc:
                await respond(send, 502, str(exc).encode())

        return knative_probe(app)

    return factory
