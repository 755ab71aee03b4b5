"""The pure translator: Knative objects in, Envoy protobuf resources out.

No I/O, no logging, deterministic output (everything sorted by name).
"""
