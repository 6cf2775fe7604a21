#!/bin/sh
# Instructions per HTTP/2 request in gatewayd (valgrind callgrind: counts, not time, so a busy
# machine does not skew them). One worker under callgrind behind an h2c (prior knowledge) or TLS
# (ALPN h2) listener, the upstream nginx of `bench h2` (`return 200 "ok"`, HTTP/1.1 keep-alive).
# Counters are zeroed after a warm-up, then N requests with h2load (-c16 -m16, or $SHAPE), then
# dumped: Ir / N is the cost of one request, startup excluded.
#
#   bench/h2-profile/callgrind.sh target/release/gatewayd [h2c|tls|h1tls] [N]    (~1-2 min)
#   SUBJECT=nginx bench/h2-profile/callgrind.sh target/release/gatewayd tls 20000
#
# h1tls: HTTP/1.1 over TLS (h2load --h1, keep-alive; `bench tls`'s HTTPS keep-alive workload).
# SUBJECT=nginx counts nginx (Debian's, one process: `master_process off`) proxying to the same
# upstream with the same certificate, configured as in `bench h2` (forwarding headers, request id,
# Server-Timing, TLS 1.3 with rustls' suites): the like-for-like reference. gatewayd's binary is
# still needed for `certs init`.
#
# Prints instructions per request and the top functions (inclusive) to stdout; the raw
# callgrind.out stays in $OUT (default target/bench/h2-callgrind).
set -eu
BIN=$(realpath "$1"); MODE=${2:-h2c}; N=${3:-20000}; SHAPE=${SHAPE:--c16 -m16}; SUBJECT=${SUBJECT:-gatewayd}
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
mkdir -p "$OUT/ng"
cat > "$OUT/ng/nginx.conf" <<NGX
daemon off; master_process off; worker_processes 1; pid $OUT/ng/nginx.pid; error_log $OUT/ng/error.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 60s;
  client_body_temp_path $OUT/ng/cb; proxy_temp_path $OUT/ng/p; fastcgi_temp_path $OUT/ng/f;
  uwsgi_temp_path $OUT/ng/u; scgi_temp_path $OUT/ng/s;
  upstream backend { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$GW http2; listen 127.0.0.1:$TLS ssl http2; listen 127.0.0.1:$MET;
    ssl_certificate $OUT/certs/server.crt; ssl_certificate_key $OUT/certs/server.key;
    ssl_protocols TLSv1.3; ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_conf_command Ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256;
    location = /readyz { return 200 "ok"; }
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host; proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\$host";
      proxy_set_header X-Request-Id \$request_id; add_header X-Request-Id \$request_id always;
      add_header Server-Timing "upstream;dur=\$upstream_response_time" always; } } }
NGX
taskset -c 0 nginx -p "$OUT/up" -e "$OUT/up/error.log" -c "$OUT/up/nginx.conf" & NGINX=$!
# Under the shim bench/callgrind-proxy.sh uses too (see bench/tools/no-prctl-auxv.c for why).
cc -O2 -o "$OUT/no-prctl-auxv" "$(dirname "$0")/../tools/no-prctl-auxv.c"
if [ "$SUBJECT" = nginx ]; then
  set -- nginx -p "$OUT/ng" -e "$OUT/ng/error.log" -c "$OUT/ng/nginx.conf"
else
  set -- "$BIN" --config "$OUT/gatewayd.toml"
fi
"$OUT/no-prctl-auxv" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" "$@" \
  >"$OUT/$SUBJECT.log" 2>&1 & VG=$!
trap 'kill $VG $NGINX 2>/dev/null || true' EXIT
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$MET/readyz" >/dev/null && break; sleep 0.2; done
case $MODE in
  tls) URL="https://127.0.0.1:$TLS/" ;;
  h1tls) URL="https://127.0.0.1:$TLS/"; SHAPE="--h1 $SHAPE" ;;
  *) URL="http://127.0.0.1:$GW/" ;;
esac
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
echo "$SUBJECT, mode $MODE, $N requests ($SHAPE): $IR instructions, $((IR / N)) per request"
grep -E '^(TLS Protocol|Cipher|Server Temp Key|Application protocol):' "$OUT/h2load.txt" || true
callgrind_annotate --inclusive=yes "$DUMP" 2>/dev/null | sed -n '/file:function/,$p' | head -${TOP:-60}
