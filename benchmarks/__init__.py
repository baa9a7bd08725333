"""The maintained benchmarks: each runs as ``python -m benchmarks.NAME`` from the repository root and writes
``benchmarks/results/NAME.{json,md}``; ``benchmarks/RESULTS.md`` says what each measured."""
