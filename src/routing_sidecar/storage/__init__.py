"""Durable state: the only place aiosqlite is imported."""
