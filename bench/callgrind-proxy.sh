#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a busy machine, unlike
# wall-clock CPU figures. Same shape as `bench proxy` (1 worker, keep-alive clients, an nginx
# upstream answering "ok"); only the N measured requests are counted (instrumentation is switched
# on after startup and warm-up), every thread of gatewayd included.
# Usage: bench/callgrind-proxy.sh GATEWAYD_BIN [REQUESTS] [CONNECTIONS]   (~1 minute)
# Needs valgrind, gcc, nginx and hey. valgrind runs under tools/no-prctl-auxv (see there why).
set -eu
gw=${1:?gatewayd binary}; n=${2:-4000}; c=${3:-16}
d=$(mktemp -d /tmp/cg-proxy.XXXX)
P_UP=22080 P_GW=22081 P_GWM=22090
. "$(dirname "$0")/lib/proxy-subjects.sh"
up_conf "$d" $P_UP 1024 >"$d/up.conf"
gw_conf $P_GW $P_GWM $P_UP >"$d/gw.toml"
gcc -O2 -o "$d/no-prctl-auxv" "$(dirname "$0")/tools/no-prctl-auxv.c"
nginx -c "$d/up.conf" & up=$!
"$d/no-prctl-auxv" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg.out" "$gw" run -c "$d/gw.toml" \
  2>"$d/valgrind.log" & gwpid=$!
trap 'kill $up $gwpid 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$P_GW/" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$P_GW/"
hey -n $((n / 4)) -c "$c" "http://127.0.0.1:$P_GW/" >/dev/null   # warm-up: pools, caches
callgrind_control -i on "$gwpid" >/dev/null
hey -n "$n" -c "$c" "http://127.0.0.1:$P_GW/" > "$d/hey.txt"
callgrind_control -i off "$gwpid" >/dev/null
callgrind_control -d "$gwpid" >/dev/null
grep -q "\[200\]	$n responses" "$d/hey.txt" || { echo "not all $n requests answered 200:"; cat "$d/hey.txt"; exit 1; }
total=$(cat "$d"/cg.out* | awk '/^totals:/ { s += $2 } END { print s }')
echo "instructions per request: $((total / n)) ($total over $n requests; profile: $d/cg.out*)"
echo "top functions: callgrind_annotate --inclusive=no $(ls "$d"/cg.out* | tail -1) | head -40"
