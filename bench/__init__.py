"""Benchmark harness: Route RPC vs a no-op gRPC service, core selection, cold start, memory."""
