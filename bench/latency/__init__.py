"""The sidecar's speed and footprint against a no-op gRPC service (`make bench`)."""
