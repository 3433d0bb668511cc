"""Load harness and micro-benchmarks (never collected by the default test run)."""
