#!/bin/sh
# Instructions per HTTP/2 request in gatewayd (valgrind callgrind: counts, not time, so a busy
# machine does not skew them). One worker under callgrind behind an h2c (prior knowledge) or TLS
# (ALPN h2) listener, the upstream nginx of `bench h2` (`return 200 "ok"`, HTTP/1.1 keep-alive).
# Counters are zeroed after a warm-up, then N requests with h2load (-c16 -m16, or $SHAPE), then
# dumped: Ir / N is the cost of one request, startup excluded.
#
#   bench/h2-profile/callgrind.sh target/release/gatewayd [h2c|tls] [N]    (~1-2 min)
#
# Prints instructions per request and the top functions (inclusive) to stdout; the raw
# callgrind.out stays in $OUT (default target/bench/h2-callgrind).
set -eu
BIN=$(realpath "$1"); MODE=${2:-h2c}; N=${3:-20000}; SHAPE=${SHAPE:--c16 -m16}
OUT=$(realpath -m "${OUT:-target/bench/h2-callgrind}")
rm -rf "$OUT"; mkdir -p "$OUT/up"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(port); GW=$(port); TLS=$(port); MET=$(port)
cat > "$OUT/up/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $OUT/up/nginx.pid; error_log $OUT/up/error.log warn;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; keepalive_requests 1000000; keepalive_timeout 120s;
  client_body_temp_path $OUT/up/cb; proxy_temp_path $OUT/up/p; fastcgi_temp_path $OUT/up/f;
  uwsgi_temp_path $OUT/up/u; scgi_temp_path $OUT/up/s;
  server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } } }
NGX
"$BIN" certs init --force --cn localhost --san localhost,127.0.0.1 --key-type ecdsa-p256 --days 2 --out "$OUT/certs" >/dev/null
cat > "$OUT/gatewayd.toml" <<TOML
[server]
workers = 1
log_level = "warn"

[[listeners]]
name = "h2c"
bind = "127.0.0.1:$GW"

[[listeners]]
name = "tls"
bind = "127.0.0.1:$TLS"

[listeners.tls]
certificates = [{ cert = "$OUT/certs/server.crt", key = "$OUT/certs/server.key" }]

[metrics]
bind = "127.0.0.1:$MET"

[admin]
socket = ""

[[services]]
name = "upstream"
targets = ["127.0.0.1:$UP"]
max_idle_per_target = 64

[[routes]]
name = "all"
service = "upstream"
auth = "none"
TOML
taskset -c 0 nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" & NGINX=$!
# Under the shim bench/callgrind-proxy.sh uses too (see bench/tools/no-prctl-auxv.c for why).
cc -O2 -o "$OUT/no-prctl-auxv" "$(dirname "$0")/../tools/no-prctl-auxv.c"
"$OUT/no-prctl-auxv" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" "$BIN" --config "$OUT/gatewayd.toml" \
  >"$OUT/gatewayd.log" 2>&1 & VG=$!
trap 'kill $VG $NGINX 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$MET/readyz" >/dev/null && break; sleep 0.2; done
if [ "$MODE" = tls ]; then URL="https://127.0.0.1:$TLS/"; else URL="http://127.0.0.1:$GW/"; fi
# shellcheck disable=SC2086
h2load -n 2000 $SHAPE "$URL" >/dev/null
callgrind_control -z "$VG" >/dev/null
# shellcheck disable=SC2086
h2load -n "$N" $SHAPE "$URL" > "$OUT/h2load.txt"
grep -q "$N succeeded" "$OUT/h2load.txt" || { cat "$OUT/h2load.txt"; exit 1; }
callgrind_control -d "$VG" >/dev/null
kill -INT $VG; wait $VG || true
DUMP=$(ls -t "$OUT"/callgrind.out* | grep -v '^$' | head -1)
for f in "$OUT"/callgrind.out.*; do [ -e "$f" ] && DUMP=$f; done
IR=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1; exit}')
echo "mode $MODE, $N requests ($SHAPE): $IR instructions, $((IR / N)) per request"
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | sed -n '/file:function/,$p' | head -${TOP:-60}
