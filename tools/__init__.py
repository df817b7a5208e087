"""Tools that are not benches: the offline GPU bundle and the GPU acceptance run (tools/gpu)."""
