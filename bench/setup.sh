#!/usr/bin/env bash
# The load generators of `make bench`, installed once (idempotent):
# - wrk (Debian package) for the maximum-rate runs, scripted by bench/traffic.lua;
# - bench/loadgen, the open-loop fixed-rate generator, built with cargo into bench/.tools.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "bench/setup.sh: wrk is missing; install it as root: apt-get install -y wrk" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

CARGO_TARGET_DIR=.tools/target cargo build --release --locked --quiet \
    --manifest-path loadgen/Cargo.toml
