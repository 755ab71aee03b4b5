"""Frozen domain objects parsed once, at the boundary, from raw Kubernetes documents."""
