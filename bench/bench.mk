# Benchmark targets (included by the Makefile). Never part of `make test`.

bench-setup: ## install the load generators (wrk from Debian, bench/loadgen with cargo)
	@bash bench/setup.sh

bench: setup bench-setup ## load bench: null ceiling vs durable ingest vs naive baseline (~3 min)
	@$(BIN)/python -m bench.load $(BENCH_ARGS)

bench-flush: setup ## the flush statement alone, no HTTP: ms per flush and events/s by batch size
	@$(BIN)/python -m bench.bench_flush $(BENCH_ARGS)

bench-native: setup ## micro-benchmarks: native vs pure-Python reference, msgspec decoding
	$(BIN)/pytest -q -p no:cacheprovider bench/bench_native.py bench/bench_decode.py \
		--benchmark-enable --benchmark-columns=min,median,ops --benchmark-sort=name

bench-enrich: setup ## enrichment: one worker's messages/s, webhook to analysis p50/p95
	$(BIN)/python bench/bench_enrich.py $(BENCH_ARGS)

bench-ws: setup ## live stream: webhook to message.created frame p50/p99, 1,000 idle clients
	$(BIN)/python bench/bench_ws.py $(BENCH_ARGS)

bench-quality: setup ## analysis quality on the held-out labelled Portuguese messages, per trait
	$(BIN)/python -m bench.bench_quality $(BENCH_ARGS)

bench-slow: setup ## 5,000 slow connections vs a normal webhook client (~3 min; --before: old settings)
	$(BIN)/python -m bench.bench_slow $(BENCH_ARGS)

.PHONY: bench bench-setup bench-flush bench-native bench-enrich bench-ws bench-slow bench-quality
