"""Pure, deterministic decision logic: no I/O, no clocks, no randomness of its own."""
