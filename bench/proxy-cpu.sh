#!/usr/bin/env bash
# CPU per proxied request of one or more gatewayd binaries (before/after a change), interleaved:
# each binary runs with 1 worker pinned on CPU 1 (its own port), wrk -t1 -c64 and the nginx
# upstream (`return 200 "ok"`) on CPU 0. Per round and binary: user and sys µs per request from
# /proc/PID/stat, and from perf's software counters (these work in VMs without hardware
# counters) context switches and syscalls per request. Prints medians over the rounds.
# (callgrind instruction counts are not available: under valgrind 3.19 the binary crashes at
# start in rustix's auxv check, bytecodealliance/rustix#1559.)
# Usage: bench/proxy-cpu.sh [-s SECONDS] [-r ROUNDS] BIN...   (defaults 8 s, 5 rounds)
# Takes about ROUNDS × BINS × (SECONDS + 1) s plus 10 s. Needs nginx, wrk, perf.
set -eu
secs=8 rounds=5
while getopts s:r: o; do case $o in s) secs=$OPTARG ;; r) rounds=$OPTARG ;; *) exit 2 ;; esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-s SECONDS] [-r ROUNDS] BIN..." >&2; exit 2; }
for t in nginx wrk perf; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
d=$(mktemp -d /tmp/proxy-cpu.XXXX)
P_UP=22080
. "$(dirname "$0")/lib/proxy-subjects.sh"
up_conf "$d" $P_UP >"$d/up.conf"
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"; }
trap cleanup EXIT
taskset -c 0 nginx -c "$d/up.conf" & PIDS+=($!)
wait_port $P_UP
GWS=() PORTS=()
for i in $(seq 0 $(($# - 1))); do
  port=$((22100 + i)); gw_conf $port $((22200 + i)) $P_UP >"$d/gw$i.toml"
  bin=${@:$((i + 1)):1}
  "$bin" check-config "$d/gw$i.toml" >/dev/null
  taskset -c 1 "$bin" --config "$d/gw$i.toml" 2>"$d/gw$i.err" & GWS+=($!); PIDS+=($!); PORTS+=($port)
done
for i in "${!GWS[@]}"; do wait_port ${PORTS[$i]}; taskset -c 0 wrk -t1 -c64 -d2s http://127.0.0.1:${PORTS[$i]}/ >/dev/null; done
hz=$(getconf CLK_TCK)
ev=context-switches,syscalls:sys_enter_read,syscalls:sys_enter_write,syscalls:sys_enter_readv,syscalls:sys_enter_writev,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait
for r in $(seq 1 "$rounds"); do for i in "${!GWS[@]}"; do
  pid=${GWS[$i]}
  read -r -a a </proc/$pid/stat
  perf stat -x, -e $ev -p $pid -o "$d/perf" -- sleep "$secs" &
  PERF=$!
  out=$(taskset -c 0 wrk -t1 -c64 -d${secs}s http://127.0.0.1:${PORTS[$i]}/)
  wait $PERF
  read -r -a b </proc/$pid/stat
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  # perf's window and wrk's differ by process start-up only: the rate normalises both to requests.
  sys=$(awk -F, -v n="$n" '$3 ~ /^(syscalls|context)/ {sub("syscalls:sys_enter_","",$3); printf "%s=%.2f ", $3, $1/n}' "$d/perf")
  echo "$i $r $n $(echo "${a[13]} ${b[13]} ${a[14]} ${b[14]} $n $hz" | awk '{printf "%.2f %.2f", ($2-$1)/$6*1e6/$5, ($4-$3)/$6*1e6/$5}') $sys" >>"$d/rows"
done; done
echo "binary | rounds | median user µs/req | median sys µs/req | median total | per request (last round)"
for i in "${!GWS[@]}"; do
  awk -v i=$i -v bin="${@:$((i + 1)):1}" '$1 == i {u[++k]=$4; s[k]=$5; t[k]=$4+$5; last=""; for (f=6; f<=NF; f++) last=last" "$f}
    function med(x, k,   j, m, tmp) { for (j=1;j<=k;j++) for (m=j+1;m<=k;m++) if (x[m]<x[j]) {tmp=x[j];x[j]=x[m];x[m]=tmp}; return x[int((k+1)/2)] }
    END {printf "%s | %d | %.2f | %.2f | %.2f |%s\n", bin, k, med(u,k), med(s,k), med(t,k), last}' "$d/rows"
done
echo "raw rounds (binary index, round, requests, user, sys, counters):"; cat "$d/rows"
