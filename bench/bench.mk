# Benchmark targets (included by the Makefile). Never part of `make test`.

bench: setup ## load benchmark: null ceiling vs durable ingest vs naive baseline (a few minutes)
	@echo "bench: not written yet" && exit 1

.PHONY: bench
