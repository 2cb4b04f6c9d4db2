"""Provider adapters for execute mode."""
