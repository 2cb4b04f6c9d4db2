"""Benchmark harness: Route RPC vs a no-op gRPC service, core decision, cold start, memory."""
