"""One-command GPU benchmark suite: `python -m benchmarks.suite`."""
