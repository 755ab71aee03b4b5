"""Immutable, content-versioned snapshots of everything kxds serves.

A resource's version is a hash of its deterministic serialisation and a type's version derives
from its resources, so two replicas given the same objects serve the same versions and an Envoy
that reconnects to another replica is not re-sent what it already has (xds-protocol.md §9).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf import any_pb2, message

from kxds.xds.patched import patched
from kxds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SCOPED_ROUTE, SECRET, Encoded, Refs, content_version, refs


# ADS order: a resource is sent after everything it depends on (xds-protocol.md §6.4); scopes
# before routes, since a gateway asks for a scope's route configuration only once it has the scope.
ORDER = (SECRET, CLUSTER, ENDPOINT, LISTENER, SCOPED_ROUTE, ROUTE)
# Types whose responses must hold the full set: a missing resource is a deletion (§2.4).
FULL_STATE = frozenset({CLUSTER, LISTENER, SCOPED_ROUTE})
EMPTY: Mapping[str, "Resource"] = MappingProxyType({})
NONE: Refs = ()
SHORT_NAMES = {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SCOPED_ROUTE: "SRDS", SECRET: "SDS"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Resource:
    name: str
    version: str
    type_url: str = field(default="", compare=False)
    data: bytes = field(default=b"", repr=False, compare=False)  # the serialised resource
    # (type URL, name) of what must be applied before this resource is usable: for a route
    # configuration the clusters it routes to; for a cluster its load assignment and TLS secrets;
    # for a listener the clusters its filters call.
    needs: Refs = NONE
    # (type URL, name) of what a gateway subscribes to once it has this resource.
    asks: Refs = NONE

    @property
    def body(self) -> any_pb2.Any:
        """The resource as it goes on the wire; built when sent, so a snapshot holds bytes only."""
        return any_pb2.Any(type_url=self.type_url, value=self.data)

    @classmethod
    def of(cls, name: str, msg: message.Message, needs: Iterable[tuple[str, str]] = NONE) -> Resource:
        body = any_pb2.Any()
        body.Pack(msg, deterministic=True)
        return cls(name=name, version=content_version(body.value), type_url=body.type_url, data=body.value, needs=refs(needs))

    @classmethod
    def encoded(cls, type_url: str, encoded: Encoded, needs: Iterable[tuple[str, str]] = NONE, asks: Iterable[tuple[str, str]] = NONE) -> Resource:
        return cls.wrapped(type_url, encoded, refs(needs), refs(asks))

    @staticmethod
    def wrapped(type_url: str, encoded: Encoded, needs: Refs, asks: Refs) -> Resource:
        """`encoded` as served. Set through the slots' own descriptors: the generated frozen
        __init__ goes through object.__setattr__ per field, three times slower (110,000 resources
        at 10,000 Ingresses)."""
        resource = _NEW(Resource)
        _SET_NAME(resource, encoded.name)
        _SET_VERSION(resource, encoded.version)
        _SET_TYPE_URL(resource, type_url)
        _SET_DATA(resource, encoded.data)
        _SET_NEEDS(resource, needs)
        _SET_ASKS(resource, asks)
        return resource


_NEW = object.__new__
_FIELDS = ("name", "version", "type_url", "data", "needs", "asks")
_SET_NAME, _SET_VERSION, _SET_TYPE_URL, _SET_DATA, _SET_NEEDS, _SET_ASKS = (getattr(Resource, f).__set__ for f in _FIELDS)
if set(Resource.__slots__) != set(_FIELDS):
    raise ImportError("Resource.encoded no longer sets every field of Resource")


def entry_digest(name: str, version: str) -> int:
    """One resource's share of its type's version (the type's is the XOR of its resources')."""
    return int.from_bytes(hashlib.sha256(f"{name}\0{version}".encode()).digest()[:8], "big")


def fold(resources: Mapping[str, Resource]) -> int:
    folded = 0
    for name, resource in resources.items():
        folded ^= entry_digest(name, resource.version)
    return folded


def folded_version(folded: int) -> str:
    return f"{folded:016x}"


def set_version(resources: Mapping[str, Resource]) -> str:
    """The version of a set of resources: independent of order, replica and process. An XOR of
    per-resource digests, so a snapshot that changes a few resources updates it in O(changed)."""
    return folded_version(fold(resources))


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    serial: int
    resources: Mapping[str, Mapping[str, Resource]]  # type URL → name → resource
    # Type URL → folded version of all its resources, filled on first use or carried over.
    _folds: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    # Type URL → (an earlier mapping of that type, the names changed since): lets a stream that
    # holds that mapping find what to send without comparing every resource.
    _changes: dict[str, tuple[Mapping[str, Resource], frozenset[str]]] = field(default_factory=dict, compare=False, repr=False)

    def changed_since(self, type_url: str, held: Mapping[str, Resource]) -> frozenset[str] | None:
        """Names of this type that may differ from `held`, if known cheaply; None otherwise."""
        change = self._changes.get(type_url)
        return change[1] if change is not None and change[0] is held else None

    def derivations(self) -> Iterator[tuple[Mapping[str, Resource], Mapping[str, Resource], frozenset[str]]]:
        """(this snapshot's mapping of a type, the earlier mapping it was stepped from, the names
        that changed between them), for each type a step changed."""
        for type_url, (base, names) in self._changes.items():
            yield self.of_type(type_url), base, names

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, EMPTY)

    def type_version(self, type_url: str) -> str:
        """The version of all resources of a type, computed once per snapshot."""
        if type_url not in self._folds:
            self._folds[type_url] = fold(self.of_type(type_url))
        return folded_version(self._folds[type_url])

    def with_changes(self, serial: int, changes: Mapping[str, Mapping[str, Resource | None]]) -> Snapshot:
        """A new snapshot where only these resources differ: type URL → name → the new resource, or
        None for one that is gone. Costs O(changed): each changed type's mapping is patched, not copied."""
        resources = dict(self.resources)
        folds = dict(self._folds)
        recorded = dict(self._changes)
        for type_url, changed in changes.items():
            if not changed:
                continue
            current = self.of_type(type_url)
            fold = folds.get(type_url)
            if fold is not None:
                for name, resource in changed.items():
                    old = current.get(name)
                    fold ^= (entry_digest(name, old.version) if old is not None else 0) ^ (entry_digest(name, resource.version) if resource is not None else 0)
                folds[type_url] = fold
            stepped = patched(current, changed)
            resources[type_url] = MappingProxyType(stepped) if isinstance(stepped, dict) else stepped
            recorded[type_url] = (current, frozenset(changed))
        return Snapshot(serial=serial, resources=MappingProxyType(resources), _folds=folds, _changes=recorded)

    @classmethod
    def of(cls, serial: int, by_type: Mapping[str, dict[str, Resource]], previous: Snapshot | None = None) -> Snapshot:
        """A snapshot of these resources. A type whose resources are all `previous`'s very objects
        keeps `previous`'s mapping and version, so streams holding it see no change at no cost."""
        kept: dict[str, Mapping[str, Resource]] = {}
        folds: dict[str, int] = {}
        for type_url, resources in by_type.items():
            before = previous.of_type(type_url) if previous is not None else EMPTY
            if previous is not None and len(before) == len(resources) and all(before.get(n) is r for n, r in resources.items()):
                kept[type_url] = before
                if type_url in previous._folds:
                    folds[type_url] = previous._folds[type_url]
            else:
                kept[type_url] = MappingProxyType(resources)
        return cls(serial=serial, resources=MappingProxyType(kept), _folds=folds)
