"""The gRPC surface: conversions, servicer, server, health and reflection."""
