"""The example generator, importable by tests and benchmarks (`from examples import make_examples`)."""
