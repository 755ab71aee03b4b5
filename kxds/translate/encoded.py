"""Resources encoded once, with their content version, and route configurations assembled from
encoded vhosts by concatenation: a protobuf message's bytes are its fields' bytes in sequence, so
one Ingress change costs a join of cached bytes, not a rebuild and re-serialisation of everything.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from envoy.config.route.v3 import route_pb2
from google.protobuf import message, wrappers_pb2

from kxds.resources import Encoded, content_version

_ROUTE_CONFIGURATION = route_pb2.RouteConfiguration.DESCRIPTOR.fields_by_name
# Name first, then the vhosts, then the rest: field-number order.
_NAME, _VHOSTS = _ROUTE_CONFIGURATION["name"].number, _ROUTE_CONFIGURATION["virtual_hosts"].number
assert _NAME < _VHOSTS < min(_ROUTE_CONFIGURATION[f].number for f in ("validate_clusters", "request_headers_to_remove"))


def serialized(msg: message.Message) -> bytes:
    """A message's deterministic bytes (maps sorted): what versions are hashed from."""
    return msg.SerializeToString(deterministic=True)


def encode(name: str, msg: message.Message) -> Encoded:
    data = serialized(msg)
    return Encoded(name, data, content_version(data))


def _varint(n: int) -> bytes:
    if n < 0x80:  # most lengths and every tag kxds writes: one byte
        return _BYTES[n]
    if n < 0x4000:  # a route or a vhost: two
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


_BYTES = [bytes((n,)) for n in range(0x80)]
# Length-delimited tags of the field numbers kxds writes (one byte up to field 15).
_TAGS = [_varint(number << 3 | 2) for number in range(64)]


def length_delimited(number: int, data: bytes) -> bytes:
    """One length-delimited field (a message, string or bytes) as it appears in its parent's bytes.

    Appended in field-number order, such fields give exactly the parent's deterministic encoding."""
    size = len(data)
    return _TAGS[number] + (_BYTES[size] if size < 0x80 else _varint(size)) + data


def field_head(number: int, size: int) -> bytes:
    """The tag and length of a length-delimited field of `size` bytes: joined with its data, what
    `length_delimited` gives, without copying a large value twice."""
    return _TAGS[number] + (_BYTES[size] if size < 0x80 else _varint(size))


def string_field(number: int, value: str) -> bytes:
    """A proto3 string field: nothing at all when empty, as the runtime writes it."""
    return length_delimited(number, value.encode()) if value else b""


def enum_field(number: int, value: int) -> bytes:
    """A proto3 enum (or other varint) field: nothing when 0."""
    return _varint(number << 3) + _varint(value) if value else b""


@dataclass(frozen=True, slots=True)
class RouteTable:
    """A route configuration as its encoded vhosts (sorted by name), assembled on demand."""

    name: str
    vhosts: tuple[Encoded, ...]
    # Request headers removed before going upstream (the scoped layout's listener mark).
    remove_headers: tuple[str, ...] = ()

    @classmethod
    def of(cls, name: str, vhosts: Iterable[Encoded], *, remove_headers: tuple[str, ...] = ()) -> RouteTable:
        return cls(name, tuple(sorted(vhosts, key=lambda v: v.name)), remove_headers)

    def encode(self) -> Encoded:
        # validate_clusters: Envoy rejects routes naming a cluster it lacks instead of 503ing them
        # silently; kxds orders pushes so this never happens (xds-protocol.md §6.3).
        head = length_delimited(_NAME, self.name.encode())
        parts = [head]
        for v in self.vhosts:
            parts += (field_head(_VHOSTS, len(v.data)), v.data)
        parts.append(_table_tail(self.remove_headers))
        data = b"".join(parts)
        # Deterministic in the content, without hashing megabytes on every change.
        version = hashlib.sha256("".join([self.name, *(v.version for v in self.vhosts), *self.remove_headers]).encode()).hexdigest()[:16]
        return Encoded(self.name, data, version)


@functools.lru_cache(maxsize=16)
def _table_tail(remove_headers: tuple[str, ...]) -> bytes:
    return serialized(route_pb2.RouteConfiguration(validate_clusters=wrappers_pb2.BoolValue(value=True), request_headers_to_remove=remove_headers))
