"""Developer tools: synthetic sample images for tests, benchmarks and demos (not shipped)."""
