"""Process-level pieces: threads, denormals, heap, ranks, the output lock, progress observers."""
