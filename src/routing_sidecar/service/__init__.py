"""Async orchestration of the core over the storage and provider ports."""
