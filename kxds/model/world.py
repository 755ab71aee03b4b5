"""Everything the translator reads, as one immutable value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kxds.model.config import KourierConfig, NetworkConfig, TrustBundle
from kxds.model.ingress import Ingress
from kxds.model.secret import Secret
from kxds.model.service import EndpointSlice, Service


@dataclass(frozen=True, slots=True, kw_only=True)
class World:
    ingresses: tuple[Ingress, ...] = ()
    services: Mapping[str, Service] = field(default_factory=dict)  # "ns/name"
    endpoint_slices: Mapping[str, tuple[EndpointSlice, ...]] = field(default_factory=dict)  # "ns/service-name"
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    kourier: KourierConfig = field(default_factory=KourierConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    trust_bundles: tuple[TrustBundle, ...] = ()  # in key order
