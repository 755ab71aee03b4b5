"""kmock's KubernetesEmulator, extended with what the watch tests need (as its docs invite).

The stock emulator keeps objects as plain merged dicts: no resourceVersion, no generation, no 410.
This subclass adds a cluster-wide resourceVersion counter stamped on every write, optimistic
concurrency (a write carrying a stale resourceVersion gets 409 Conflict), `generation`
bumped when a spec changes (status writes never bump it), lists that carry the current
resourceVersion (paged with `limit` and `continue`, as an API server pages them), and `expire(resource)`, which ends the resource's open watches with 410 Gone and
refuses to resume from any older resourceVersion, as an API server does after compaction; and
`hold_lists(resource)`, which makes lists wait, so a test can stage changes while a watch is down.

Made fast enough to benchmark through: the stock emulator finds the object of a read or write by
scanning every stored object, and matches each request against every request recorded so far, so a
call costs O(objects + requests so far), and a few thousand Knative Services made each call take
tenths of a second. Here reads and writes of one object go straight to it by key, and kmock's
request log holds only the requests in flight; `log` keeps them all, for assertions.

Not emulated: replaying history from a resourceVersion. A watch started from a version still gets
every existing object as ADDED and then live events, so a change made between a list and the
next watch is seen by no watcher; the relist test stages its changes while lists are held.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from collections.abc import AsyncIterator
from typing import Any

import attrs
from kmock import KubernetesEmulator, KubernetesError, KubernetesObjectNotFoundError
from kmock._internal import enums, rendering


def _gone() -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}


@attrs.define(kw_only=True)
class VersionedEmulator(KubernetesEmulator):
    _version: int = attrs.field(default=0, init=False)
    # Keyed by the resource's plural name.
    _compacted: dict[str, int] = attrs.field(factory=dict, init=False)
    _expired: dict[str, asyncio.Event] = attrs.field(factory=lambda: collections.defaultdict(asyncio.Event), init=False)
    watch_requests: list[dict[str, str]] = attrs.field(factory=list, init=False)
    # Every request served, for assertions (kmock's own log holds only the requests in flight here).
    log: list[rendering.Request] = attrs.field(factory=list, init=False)
    # Plural names whose list requests wait until released (to stage changes during an outage).
    _held: dict[str, asyncio.Event] = attrs.field(factory=dict, init=False)

    async def _handle(self, request: rendering.Request) -> Any:
        self.log.append(request)
        if request.resource is not None and isinstance(request.data, dict):
            if request.action in (enums.action.CREATE, enums.action.UPDATE):
                self._stamp(request)
        try:
            return await super()._handle(request)
        finally:
            self._forget(request)

    def _forget(self, request: rendering.Request) -> None:
        # Every request is matched against every reaction's view of the request log, so a log that
        # only grows makes each call slower than the last; assertions read `log` instead.
        for i, logged in enumerate(self._requests):
            if logged is request:
                del self._requests[i]
                return

    def _stamp(self, request: rendering.Request) -> None:
        metadata = request.data.setdefault("metadata", {})
        key = (request.resource, request.namespace, request.name)
        stored = self.objects[key].raw if request.action == enums.action.UPDATE and key in self.objects else {}
        claimed, current = metadata.get("resourceVersion"), (stored.get("metadata") or {}).get("resourceVersion")
        if claimed and current and claimed != current:
            raise KubernetesError(status=409, reason="Conflict", message="the object has been modified; please apply your changes to the latest version")
        self._version += 1
        metadata["resourceVersion"] = str(self._version)
        if request.action == enums.action.CREATE:
            metadata.setdefault("generation", 1)
            metadata.setdefault("creationTimestamp", f"2026-01-01T00:00:{self._version % 60:02d}Z")
            return
        generation = (stored.get("metadata") or {}).get("generation", 1)
        if request.subresource != "status" and "spec" in request.data and request.data["spec"] != stored.get("spec"):
            generation += 1
        metadata["generation"] = generation

    async def _serve_list(self, request: rendering.Request) -> Any:
        held = self._held.get(str(request.resource.plural if request.resource is not None else ""))
        if held is not None:
            await held.wait()
        payload = await super()._serve_list(request)
        payload["metadata"]["resourceVersion"] = str(self._version)
        limit = int(request.params.get("limit") or 0)
        if limit > 0:
            # Pages in name order; the continue token is the next page's offset (opaque to clients).
            items = sorted(payload["items"], key=lambda o: ((o.get("metadata") or {}).get("namespace", ""), (o.get("metadata") or {}).get("name", "")))
            start = int(request.params.get("continue") or 0)
            payload["items"] = items[start:start + limit]
            if start + limit < len(items):
                payload["metadata"]["continue"] = str(start + limit)
        return copy.deepcopy(payload)

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        self.watch_requests.append(dict(request.params))
        plural = str(request.resource.plural if request.resource is not None else "")
        since = request.params.get("resourceVersion")
        if since and since.isdigit() and int(since) < self._compacted.get(plural, 0):
            yield b""
            yield _gone()
            return
        expired = self._expired[plural]
        stream = self._watch(request).__aiter__()
        while True:
            step = asyncio.ensure_future(stream.__anext__())
            gone = asyncio.ensure_future(expired.wait())
            done, _ = await asyncio.wait([step, gone], return_when=asyncio.FIRST_COMPLETED)
            if gone in done and step not in done:
                step.cancel()
                yield _gone()
                return
            gone.cancel()
            try:
                yield step.result()
            except StopAsyncIteration:
                return

    async def _watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        """Every existing object as ADDED, then every later change. The stock emulator subscribes
        only after it has sent the existing objects, so a write made meanwhile reached no one (seen
        as Ingress statuses that never turned Ready to a watching client); here the subscription
        and the snapshot are taken together under the lock that writes hold."""
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            existing = [obj.raw for (resource, namespace, name), obj in self.objects._objects.items()
                        if resource == request.resource and not obj.deleted and self._selects(request, namespace, name)]
        try:
            for raw in existing:
                yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=marker):
                metadata = event.get("object", {}).get("metadata", {})
                if self._selects(request, metadata.get("namespace"), metadata.get("name")):
                    yield event
        finally:
            await bus.unmark(marker)

    @staticmethod
    def _selects(request: rendering.Request, namespace: str | None, name: str | None) -> bool:
        return (request.namespace is None or namespace == request.namespace) and (request.name is None or name == request.name)

    def _one(self, request: rendering.Request, namespace: str | None, name: str | None) -> Any:
        """The stored object a request names, by key (the stock emulator scans every object)."""
        stored = self.objects._objects.get((request.resource, namespace, name))
        if stored is None or stored.deleted:
            raise KubernetesObjectNotFoundError()
        return stored

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        return self._one(request, request.namespace, request.name).raw

    async def _serve_create(self, request: rendering.Request) -> Any:
        metadata = request.data.get("metadata", {})
        return self._one(request, request.namespace or metadata.get("namespace"), request.name or metadata.get("name")).raw

    async def _serve_update(self, request: rendering.Request) -> Any:
        stored = self.objects._objects.get((request.resource, request.namespace, request.name))
        assert stored is not None  # written by _handle before this runs
        return stored.last.raw

    _serve_delete = _serve_update

    def expire(self, plural: str) -> None:
        """Compact history: open watches end with 410 Gone; older versions cannot be resumed from."""
        self._compacted[plural] = self._version + 1
        self._expired[plural].set()
        self._expired[plural] = asyncio.Event()

    def hold_lists(self, plural: str) -> None:
        self._held[plural] = asyncio.Event()

    def release_lists(self, plural: str) -> None:
        self._held.pop(plural).set()
