"""Route LLM tasks to the cheapest capable model; the gRPC routing sidecar."""

__version__ = "0.1.0"
