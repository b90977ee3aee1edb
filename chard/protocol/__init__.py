"""Wire formats: pure data <-> bytes, no I/O."""
