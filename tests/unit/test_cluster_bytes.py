"""Clusters and load assignments are served as bytes assembled from shared parts: they must be
exactly the deterministic encoding of the messages `clusters.cluster` and `load_assignment` build."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kxds.model.service import EndpointSlice, Service, ServicePort, SlicePort
from kxds.translate import clusters, tls
from kxds.translate.encoded import serialized

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=300)
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
ports = st.integers(min_value=1, max_value=65535)


@settings(max_examples=200, deadline=None)
@given(namespace=names, name=names, http2=st.booleans(), ca=st.one_of(st.just(""), names))
def test_an_eds_cluster_is_its_name_then_the_settings_it_shares(namespace: str, name: str, http2: bool, ca: str) -> None:
    service = Service(namespace=namespace, name=name, type="ClusterIP", external_name="", ports=(ServicePort(name="http", port=80, target_port=8080),))
    context = tls.upstream_context(ca, namespace, http2=http2) if ca else None
    expected = serialized(clusters.cluster(service, service.ports[0], http2=http2, upstream_tls=context))
    cluster_name = f"{namespace}/{name}"
    assert clusters.eds_cluster_data(cluster_name, clusters.eds_settings(http2=http2, upstream_tls=context)) == expected


@settings(max_examples=200, deadline=None)
@given(name=names, port_name=st.sampled_from(["http", "h2c", ""]), target=st.one_of(ports, st.just("http")),
       slices=st.lists(st.tuples(st.lists(addresses, max_size=40), st.lists(st.tuples(st.sampled_from(["http", "h2c", "other"]), ports), max_size=3)), max_size=4))
def test_a_load_assignment_is_the_bytes_its_message_serialises_to(name: str, port_name: str, target: int | str,
                                                                   slices: list[tuple[list[str], list[tuple[str, int]]]]) -> None:
    port = ServicePort(name=port_name, port=80, target_port=target)
    service = Service(namespace="ns", name=name, type="ClusterIP", external_name="", ports=(port,))
    pieces = tuple(
        EndpointSlice(namespace="ns", name=f"slice-{i}", service_name=name, addresses=tuple(sorted(set(found))),
                      ports=tuple(SlicePort(name=n, port=p) for n, p in slice_ports))
        for i, (found, slice_ports) in enumerate(slices)
    )
    assert clusters.load_assignment_data(service, port, pieces) == serialized(clusters.load_assignment(service, port, pieces))
