#!/usr/bin/env bash
# Kernel work per proxied request, gatewayd vs nginx vs HAProxy on the same load: syscalls per
# request by kind (perf's syscall tracepoints, exact counts), context switches, and TCP segments
# sent per request over loopback (nstat: client, proxy and upstream segments together, so the
# subjects differ only by what the proxy adds). One worker/thread of each proxy pinned to CPU 1,
# the nginx upstream (`return 200 "ok"`) and the load generator on CPU 0.
# Usage: bench/syscalls-side-by-side.sh [-s SECONDS] [-q RATE] GATEWAYD_BIN [MORE_GATEWAYD_BINS...]
#   -q RATE: open-loop load at RATE req/s (oha -c64); default is closed-loop wrk -t1 -c64.
# Requests in the window are the load's rate × SECONDS: on a busy machine the per-request figures
# wander ±10% (2.00 reads may print 1.9–2.2), and nstat counts every socket on the host.
# Takes about (SUBJECTS × (SECONDS + 3)) + 10 s. Needs nginx, haproxy, wrk, oha, perf, nstat.
set -eu
secs=5 rate=
while getopts s:q: o; do case $o in s) secs=$OPTARG ;; q) rate=$OPTARG ;; *) exit 2 ;; esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-s SECONDS] [-q RATE] GATEWAYD_BIN..." >&2; exit 2; }
for t in nginx haproxy wrk oha perf nstat; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
d=$(mktemp -d /tmp/syscalls.XXXX)
P_UP=23080 P_NG=23082 P_HA=23083
. "$(dirname "$0")/lib/proxy-subjects.sh"
up_conf "$d" $P_UP >"$d/up.conf"
cat >"$d/ng.conf" <<C
worker_processes 1; pid $d/ng.pid; error_log $d/ng.err; daemon off;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream u { server 127.0.0.1:$P_UP; keepalive 64; }
  server { listen 127.0.0.1:$P_NG; location / { proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$d/ha.cfg" <<C
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind 127.0.0.1:$P_HA
  default_backend b
backend b
  server s1 127.0.0.1:$P_UP
C
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$d"; }
trap cleanup EXIT
taskset -c 0 nginx -c "$d/up.conf" & PIDS+=($!)
NAMES=() SPIDS=() PORTS=()
for i in $(seq 0 $(($# - 1))); do
  port=$((23100 + i)); gw_conf $port $((23200 + i)) $P_UP >"$d/gw$i.toml"
  bin=${@:$((i + 1)):1}
  "$bin" check-config "$d/gw$i.toml" >/dev/null
  taskset -c 1 "$bin" --config "$d/gw$i.toml" 2>"$d/gw$i.err" & PIDS+=($!)
  NAMES+=("gatewayd$i") SPIDS+=($!) PORTS+=($port)
done
taskset -c 1 nginx -c "$d/ng.conf" & PIDS+=($!); NAMES+=(nginx) SPIDS+=($!) PORTS+=($P_NG)
taskset -c 1 haproxy -f "$d/ha.cfg" -db & PIDS+=($!); NAMES+=(haproxy) SPIDS+=($!) PORTS+=($P_HA)
wait_port $P_UP
for p in "${PORTS[@]}"; do wait_port $p; taskset -c 0 wrk -t1 -c64 -d1s http://127.0.0.1:$p/ >/dev/null; done
calls="madvise mmap munmap mprotect brk sched_yield nanosleep clock_nanosleep read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait epoll_ctl futex accept4 close setsockopt getsockopt ioctl"
ev=context-switches,page-faults,cpu-migrations
for c in $calls; do ev="$ev,syscalls:sys_enter_$c"; done
load() { # port seconds -> requests per second
  if [ -n "$rate" ]; then
    taskset -c 0 oha -z ${2}s -q "$rate" -c 64 --no-tui --output-format json http://127.0.0.1:$1/ 2>/dev/null \
      | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["summary"]["requestsPerSec"])'
  else
    taskset -c 0 wrk -t1 -c64 -d${2}s http://127.0.0.1:$1/ | awk '/Requests\/sec/ {print $2}'
  fi
}
# The counting window sits inside the load (1 s after it starts, 1 s before it ends): connection
# set-up and tear-down (first-touch page faults, the collection after connections close) stay out.
echo "load: $([ -n "$rate" ] && echo "oha -c64 -q $rate" || echo "wrk -t1 -c64") for $((secs + 2))s, counted over the middle ${secs}s; per request (all the subject's threads and processes)"
for i in "${!NAMES[@]}"; do
  pid=${SPIDS[$i]}
  targets=$pid; for c in $(pgrep -P $pid); do targets="$targets,$c"; done
  load ${PORTS[$i]} $((secs + 2)) >"$d/rps" &
  LOAD=$!
  sleep 1
  nstat -n >/dev/null
  perf stat -x, -e $ev -p $targets -o "$d/perf" -- sleep $secs
  segs=$(nstat 2>/dev/null | awk '$1=="TcpOutSegs" {o=$2} $1=="TcpExtDelayedACKs" {a=$2} END {print o+0, a+0}')
  wait $LOAD
  n=$(awk -v s=$secs '{printf "%d", $1 * s}' "$d/rps")
  echo "${NAMES[$i]} requests=$n $(awk -F, -v n="$n" '$3 != "" && $1 ~ /^[0-9]+$/ && $1 > 0 {sub("syscalls:sys_enter_","",$3); printf "%s=%.3f ", $3, $1/n}' "$d/perf")$(echo "$segs $n" | awk '{printf "tcp_out_segs=%.2f delayed_acks=%.3f", $1/$3, $2/$3}')"
done
