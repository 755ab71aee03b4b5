"""Kubernetes Secrets. Their data is never part of a repr, a log line or an error message."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kxds.model import fields
from kxds.model.errors import FieldError, InvalidObject


@dataclass(frozen=True, slots=True, kw_only=True)
class Secret:
    namespace: str
    name: str
    type: str
    data: Mapping[str, bytes] = field(repr=False, compare=False, hash=False)
    # Equality without exposing the data: a digest of it.
    fingerprint: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_secret(raw: Mapping[str, Any]) -> Secret:
    metadata = raw.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        raise InvalidObject("Secret", "", "", "metadata.name", "missing field")
    namespace, name = str(metadata.get("namespace") or "default"), metadata["name"]
    try:
        data: dict[str, bytes] = {}
        for key, value in fields.mapping(raw.get("data"), "data").items():
            try:
                data[key] = base64.b64decode(fields.string(value, f"data.{key}"), validate=True)
            except (binascii.Error, ValueError):
                raise FieldError(f"data.{key}", "not valid base64") from None
        for key, value in fields.mapping(raw.get("stringData"), "stringData").items():
            data[key] = fields.string(value, f"stringData.{key}").encode()
    except FieldError as exc:
        raise InvalidObject("Secret", namespace, name, exc.field, exc.problem) from exc
    digest = hashlib.sha256(b"".join(k.encode() + b"\0" + v + b"\0" for k, v in sorted(data.items()))).hexdigest()
    return Secret(
        namespace=namespace,
        name=name,
        type=str(raw.get("type") or "Opaque"),
        data=data,
        fingerprint=digest,
    )
