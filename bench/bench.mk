# Benchmark targets (included by the Makefile). Never part of `make test`.

bench-setup: ## install the load generators (wrk from Debian, bench/loadgen with cargo)
	@bash bench/setup.sh

bench: setup bench-setup ## load bench: null ceiling vs durable ingest vs naive baseline (~3 min)
	@$(BIN)/python -m bench.load $(BENCH_ARGS)

bench-native: setup ## micro-benchmarks: native vs pure-Python reference, msgspec decoding
	$(BIN)/pytest -q -p no:cacheprovider bench/bench_native.py bench/bench_decode.py \
		--benchmark-enable --benchmark-columns=min,median,ops --benchmark-sort=name

.PHONY: bench bench-setup bench-native
