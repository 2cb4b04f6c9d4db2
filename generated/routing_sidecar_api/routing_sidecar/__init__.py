"""Generated gRPC stubs; do not edit (make protos)."""
