"""kxds: an Envoy xDS control plane for Knative Serving, a drop-in replacement for Kourier."""

__version__ = "0.1.0"
