"""Routing-quality replay: real per-prompt outcomes streamed through fresh sidecars."""
