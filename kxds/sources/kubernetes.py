"""The Kubernetes source: list, then watch from the list's resourceVersion, for every kind kxds reads.

One thread per kind runs the synchronous `kubernetes` client (the gRPC event loop never blocks on
it) and hands typed changes to the loop. A watch resumes from the last resourceVersion it saw
(bookmarks included), re-lists on 410 Gone, and reconnects with capped exponential backoff. The
source is primed once every kind's first list is in: only then is anything translated or served.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
import urllib3
from kubernetes import client, watch

from kxds.model.errors import InvalidObject
from kxds.model.objects import Filters, ObjectKey, Parsed, object_key, parse_object

log = structlog.get_logger("kxds.sources.kubernetes")

Sink = Callable[[Mapping[ObjectKey, Parsed], Iterable[ObjectKey]], None]
INGRESS_GROUP, INGRESS_VERSION, INGRESS_PLURAL = "networking.internal.knative.dev", "v1alpha1", "ingresses"
CERTIFICATE_UID_LABEL = "networking.internal.knative.dev/certificate-uid"


@dataclass(frozen=True, slots=True, kw_only=True)
class KubernetesOptions:
    namespace: str = ""  # "" watches every namespace
    system_namespace: str = "knative-serving"
    # ENABLE_SECRET_INFORMER_FILTERING_BY_CERT_UID: watch only certificate Secrets (memory).
    secrets_by_certificate_uid: bool = False
    watch_timeout_seconds: int = 300
    max_backoff_seconds: float = 30.0
    # Objects per list page, as client-go's reflectors ask: a list of every object at once is one
    # response decoded whole (tens of megabytes of JSON at 10,000 Knative Services).
    list_page_size: int = 500


@dataclass(frozen=True, slots=True)
class Kind:
    """How to list and watch one kind, and what apiVersion/kind its list items carry."""

    api_version: str
    kind: str
    list_call: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


def kinds(api: client.ApiClient, options: KubernetesOptions) -> list[Kind]:
    core, discovery, custom = client.CoreV1Api(api), client.DiscoveryV1Api(api), client.CustomObjectsApi(api)
    ns = options.namespace
    secret_filter = (("label_selector", CERTIFICATE_UID_LABEL),) if options.secrets_by_certificate_uid else ()
    if ns:
        ingresses = Kind(f"{INGRESS_GROUP}/{INGRESS_VERSION}", "Ingress", custom.list_namespaced_custom_object,
                         (INGRESS_GROUP, INGRESS_VERSION, ns, INGRESS_PLURAL))
        services = Kind("v1", "Service", core.list_namespaced_service, (ns,))
        slices = Kind("discovery.k8s.io/v1", "EndpointSlice", discovery.list_namespaced_endpoint_slice, (ns,))
        secrets = Kind("v1", "Secret", core.list_namespaced_secret, (ns,), secret_filter)
    else:
        ingresses = Kind(f"{INGRESS_GROUP}/{INGRESS_VERSION}", "Ingress", custom.list_cluster_custom_object,
                         (INGRESS_GROUP, INGRESS_VERSION, INGRESS_PLURAL))
        services = Kind("v1", "Service", core.list_service_for_all_namespaces)
        slices = Kind("discovery.k8s.io/v1", "EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces)
        secrets = Kind("v1", "Secret", core.list_secret_for_all_namespaces, (), secret_filter)
    config_maps = Kind("v1", "ConfigMap", core.list_namespaced_config_map, (options.system_namespace,))
    out = [ingresses, services, slices, secrets, config_maps]
    if ns and ns != options.system_namespace:
        # Gateway-wide certificates and the routing CA live in the system namespace.
        out.append(Kind("v1", "Secret", core.list_namespaced_secret, (options.system_namespace,), secret_filter))
    return out


class RawWatch(watch.Watch):
    """The client's watch without its typed copy of each object: it turns every Service, EndpointSlice
    and Secret it streams into the client's model classes (a JSON round trip and a model per field),
    which kxds never reads; kxds parses `raw_object`. ERROR events (410 Gone) still raise as before:
    `deserialize=False` would fail on them with a KeyError (it looks for a 'raw_object' that only
    this path adds). Without a model the client no longer tracks resourceVersion from objects; it
    never needs to, as `_watch_once` tracks it itself and always passes `timeout_seconds`, which
    stops the client from resuming a watch on its own."""

    def get_return_type(self, func: Callable[..., Any]) -> None:
        return None  # no model: unmarshal_event returns the event as parsed, with raw_object


class KindWatcher:
    """List-then-watch of one kind, in its own thread."""

    def __init__(self, kind: Kind, filters: Filters, options: KubernetesOptions, deliver: Callable[[dict[ObjectKey, Parsed], set[ObjectKey]], None],
                 raw_sink: Callable[[ObjectKey, Mapping[str, Any] | None], None] | None = None) -> None:
        self.kind = kind
        self._filters = filters
        self._options = options
        self._deliver = deliver
        self._raw_sink = raw_sink or (lambda key, raw: None)
        self._known: set[ObjectKey] = set()
        # Ingresses: what their parse read when last parsed, as one hash (see `_as_read`).
        self._read: dict[ObjectKey, int] = {}
        self._stop = threading.Event()
        self._watch: RawWatch | None = None
        self.listed = threading.Event()
        self.resource_version: str | None = None
        self.lists = 0  # how many times this kind was listed (the first, then after each 410)

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def run(self, max_cycles: int | None = None) -> None:
        """Until stopped (or `max_cycles` watch connections, for tests)."""
        backoff, cycles = 0.5, 0
        while not self._stop.is_set() and (max_cycles is None or cycles < max_cycles):
            cycles += 1
            try:
                if self.resource_version is None:
                    self._relist()
                self._watch_once()
                backoff = 0.5
            except client.ApiException as exc:
                if exc.status == 410:
                    log.info("watch.expired", kind=self.kind.kind, resource_version=self.resource_version)
                    self.resource_version = None  # too old: list again
                    continue
                log.warning("watch.failed", kind=self.kind.kind, status=exc.status, reason=exc.reason, retry_in=backoff)
                backoff = self._sleep(backoff)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                log.warning("watch.failed", kind=self.kind.kind, error=repr(exc), retry_in=backoff)
                backoff = self._sleep(backoff)
            except Exception:  # a watch thread must never die: that would freeze this kind for good
                log.exception("watch.crashed", kind=self.kind.kind, retry_in=backoff)
                self.resource_version = None
                backoff = self._sleep(backoff)

    def _sleep(self, backoff: float) -> float:
        self._stop.wait(backoff)
        return min(backoff * 2, self._options.max_backoff_seconds)

    def _relist(self) -> None:
        """Every object, a page at a time; delivered together once the last page is in. The list's
        resourceVersion is the first page's (the API server serves the pages from that snapshot);
        a continue token that expired is a 410, and the whole list starts again."""
        upserts: dict[ObjectKey, Parsed] = {}
        version: str | None = None
        token = ""
        while True:
            paging = {"limit": self._options.list_page_size, **({"_continue": token} if token else {})}
            response = self.kind.list_call(*self.kind.args, **dict(self.kind.kwargs), **paging, _preload_content=False)
            body = json.loads(response.data)
            for raw in body.get("items") or []:
                raw.setdefault("apiVersion", self.kind.api_version)
                raw.setdefault("kind", self.kind.kind)
                key = object_key(raw)
                parsed = self._parse(raw)
                if parsed is not None:
                    upserts[key] = parsed
                    self._raw_sink(key, raw)
            metadata = body.get("metadata") or {}
            version = version or metadata.get("resourceVersion") or None
            token = metadata.get("continue") or ""
            if not token:
                break
        # Whatever vanished while we were not watching is deleted now.
        deletes = {k for k in self._known if k not in upserts}
        self._known = set(upserts)
        self._read.clear()  # parsed afresh: the next change of each is parsed too
        self.resource_version = version
        self.lists += 1
        self._deliver(upserts, deletes)
        self.listed.set()
        log.info("watch.listed", kind=self.kind.kind, objects=len(upserts), resource_version=self.resource_version)

    def _watch_once(self) -> None:
        self._watch = RawWatch()
        kwargs = dict(self.kind.kwargs)
        kwargs.update(allow_watch_bookmarks=True, timeout_seconds=self._options.watch_timeout_seconds)
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        for event in self._watch.stream(self.kind.list_call, *self.kind.args, **kwargs):
            if self._stop.is_set():
                return
            self._handle(event)

    def _handle(self, event: Mapping[str, Any]) -> None:
        kind, raw = event.get("type"), event.get("raw_object") or {}
        version = (raw.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        if kind == "BOOKMARK":
            return
        raw.setdefault("apiVersion", self.kind.api_version)
        raw.setdefault("kind", self.kind.kind)
        key = object_key(raw)
        read = self._as_read(raw) if kind != "DELETED" else None
        if kind == "MODIFIED" and read is not None and key in self._known and self._read.get(key) == read:
            self._raw_sink(key, raw)  # a status change: the status writer follows it, nothing else reads it
            return
        parsed = None if kind == "DELETED" else self._parse(raw)
        if parsed is None:
            # Deleted, or no longer ours (an Ingress whose class changed): as if deleted.
            self._read.pop(key, None)
            if key in self._known:
                self._known.discard(key)
                self._raw_sink(key, None)
                self._deliver({}, {key})
            return
        if read is not None:
            self._read[key] = read
        else:
            self._read.pop(key, None)
        self._known.add(key)
        self._raw_sink(key, raw)
        self._deliver({key: parsed}, set())

    def _as_read(self, raw: Mapping[str, Any]) -> int | None:
        """What an Ingress's parse reads (spec, annotations, labels), in brief; None where that
        cannot be told. The API server bumps `generation` on every change of an Ingress's spec and
        never on a status write, so the echo of each status kxds writes (one per life-cycle event)
        is not parsed again. Other kinds, and an Ingress without a generation, are always parsed."""
        if self.kind.kind != "Ingress":
            return None
        metadata = raw.get("metadata")
        if not isinstance(metadata, Mapping):
            return None
        generation, annotations, labels = metadata.get("generation"), _fingerprint(metadata.get("annotations")), _fingerprint(metadata.get("labels"))
        if not isinstance(generation, int) or generation <= 0 or annotations is None or labels is None:
            return None
        return hash((generation, annotations, labels))

    def _parse(self, raw: Mapping[str, Any]) -> Parsed | None:
        try:
            parsed = parse_object(raw, self._filters)
        except InvalidObject as exc:
            log.error("object.rejected", kind=self.kind.kind, error=str(exc))
            return None
        except Exception as exc:  # noqa: BLE001 - an object no check anticipated fails alone; the watch goes on
            log.error("object.rejected", kind=self.kind.kind, object=str(object_key(raw)), error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return None
        return parsed[1] if parsed is not None else None


def _fingerprint(values: Any) -> int | None:
    """A string map's content as a hash; None if it is not a string map (absent is empty)."""
    if values is None:
        return hash(frozenset())
    if not isinstance(values, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
        return None
    return hash(frozenset(values.items()))


class KubernetesSource:
    """All watchers, delivering into the event loop; `primed` once every first list is in."""

    def __init__(self, api: client.ApiClient, filters: Filters, options: KubernetesOptions, sink: Sink,
                 on_raw: Callable[[ObjectKey, Mapping[str, Any] | None], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._on_raw = on_raw
        self.watchers = [KindWatcher(k, filters, options, self._deliver, self._raw) for k in kinds(api, options)]
        self._threads: list[threading.Thread] = []

    def _deliver(self, upserts: dict[ObjectKey, Parsed], deletes: set[ObjectKey]) -> None:
        self._loop.call_soon_threadsafe(self._sink, upserts, deletes)

    def _raw(self, key: ObjectKey, raw: Mapping[str, Any] | None) -> None:
        if self._on_raw is not None:
            self._loop.call_soon_threadsafe(self._on_raw, key, raw)

    def start(self) -> None:
        for watcher in self.watchers:
            thread = threading.Thread(target=watcher.run, name=f"watch-{watcher.kind.kind}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def primed(self, timeout: float | None = None) -> None:
        started = time.monotonic()
        for watcher in self.watchers:
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            if not await asyncio.to_thread(watcher.listed.wait, remaining):
                raise TimeoutError(f"the initial list of {watcher.kind.kind} did not complete")
        # Every list's delivery was scheduled before `listed` was set; let them run first.
        await asyncio.sleep(0)

    async def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 5)


def api_client(kubeconfig: str = "", context: str = "") -> client.ApiClient:
    """From the credentials kubectl would use (kxds/kubeconfig.py): `kubeconfig` if given, then
    $KUBECONFIG, the pod's service account, ~/.kube/config; `context` picks a kubeconfig context."""
    from kubernetes import config

    from kxds.kubeconfig import resolve

    found = resolve(kubeconfig, context)
    log.info("kubernetes.credentials", source=found.source, context=found.context)
    if found.kubeconfig:
        configuration = client.Configuration()
        config.load_kube_config(config_file=found.kubeconfig, context=found.context or None, client_configuration=configuration)
    else:
        config.load_incluster_config()
        configuration = client.Configuration.get_default_copy()
    return client.ApiClient(configuration)


def event_recorder(api: client.ApiClient, component: str, host: str) -> Callable[[str, str, str, str, str, str], None]:
    """Records a core/v1 Event on an Ingress, as `kubectl describe` shows them."""
    core = client.CoreV1Api(api)

    def record(namespace: str, name: str, uid: str, kind: str, reason: str, message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        involved = client.V1ObjectReference(api_version=f"{INGRESS_GROUP}/{INGRESS_VERSION}", kind="Ingress", name=name, namespace=namespace, uid=uid or None)
        event = client.CoreV1Event(
            # client-go's name for an Event: the object's name and the time in hex nanoseconds.
            metadata=client.V1ObjectMeta(name=f"{name}.{time.time_ns():x}", namespace=namespace),
            involved_object=involved, reason=reason, message=message, type=kind, count=1,
            first_timestamp=now, last_timestamp=now, source=client.V1EventSource(component=component, host=host),
            reporting_component=component, reporting_instance=host)
        core.create_namespaced_event(namespace, event)

    return record


def ingress_status_patcher(api: client.ApiClient) -> Callable[[str, str, dict[str, Any]], None]:
    custom = client.CustomObjectsApi(api)

    def patch(namespace: str, name: str, body: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object_status(INGRESS_GROUP, INGRESS_VERSION, namespace, INGRESS_PLURAL, name, body)

    return patch
