"""segtune's benchmarks: each module is runnable as `python -m benchmarks.<name>` and writes
benchmarks/results/<name>.json (see benchmarks/README.md)."""
