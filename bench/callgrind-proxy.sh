#!/usr/bin/env bash
# Instructions per proxied HTTP/1.1 request under callgrind: a thin wrapper kept for the
# command lines already in use; the measurement is `cargo xtask bench callgrind` (see
# bench/README.md), which also writes the h1 section of bench/results/callgrind.md.
# Usage: bench/callgrind-proxy.sh GATEWAYD_BIN [REQUESTS] [CONNECTIONS]   (~1 minute)
set -eu
gw=${1:?gatewayd binary}; n=${2:-4000}; c=${3:-16}
cd "$(dirname "$0")/.."
exec cargo xtask bench callgrind --proto h1 --requests "$n" --connections "$c" "$gw"
