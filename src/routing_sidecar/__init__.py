"""Route LLM tasks to the cheapest capable model; the gRPC routing sidecar."""

from routing_sidecar.native import keep_stale_out as _keep_stale_out

__version__ = "0.1.0"
# Once a compiled module's source has changed, the compiled ones run from source (native.py).
_keep_stale_out(__name__)
