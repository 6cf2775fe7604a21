#!/usr/bin/env bash
# nginx's instructions per proxied request, counted exactly as bench/callgrind-proxy.sh counts
# gatewayd's: the target figure for issue 11. nginx runs with the proxy config of `bench proxy`
# (xtask/src/bench/proxy.rs, nginx_proxy_conf), one process (`master_process off`, so the one
# process callgrind follows is the one serving), the same upstream, client and request counts.
# Usage: bench/callgrind-nginx.sh [REQUESTS] [CONNECTIONS]   (~1 minute). Needs valgrind, nginx, hey.
set -eu
n=${1:-4000}; c=${2:-16}
d=$(mktemp -d /tmp/cg-nginx.XXXX)
P_UP=22180 P_NG=22181
cat > "$d/up.conf" <<C
worker_processes 1; pid $d/up.pid; error_log $d/up.err; daemon off;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UP; location / { return 200 "ok"; } } }
C
mkdir -p "$d/tmp"
cat > "$d/ng.conf" <<C
worker_processes 1; master_process off; pid $d/ng.pid; error_log $d/ng.err; daemon off;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fcgi;
    uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream backend {
        server 127.0.0.1:$P_UP;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
    server {
        listen 127.0.0.1:$P_NG reuseport backlog=1024;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header Forwarded "for=\$remote_addr;proto=\$scheme;host=\$host";
            proxy_set_header X-Request-Id \$request_id;
            add_header X-Request-Id \$request_id always;
            add_header Server-Timing "upstream;dur=\$upstream_response_time" always;
        }
    }
}
C
nginx -c "$d/up.conf" & up=$!
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$d/cg.out" nginx -c "$d/ng.conf" \
  2>"$d/valgrind.log" & ngpid=$!
trap 'kill $up $ngpid 2>/dev/null; wait 2>/dev/null' EXIT
for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$P_NG/" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$P_NG/"
hey -n $((n / 4)) -c "$c" "http://127.0.0.1:$P_NG/" >/dev/null   # warm-up: upstream keep-alive pool
callgrind_control -i on "$ngpid" >/dev/null
hey -n "$n" -c "$c" "http://127.0.0.1:$P_NG/" > "$d/hey.txt"
callgrind_control -i off "$ngpid" >/dev/null
callgrind_control -d "$ngpid" >/dev/null
grep -q "\[200\]	$n responses" "$d/hey.txt" || { echo "not all $n requests answered 200:"; cat "$d/hey.txt"; exit 1; }
total=$(cat "$d"/cg.out* | awk '/^totals:/ { s += $2 } END { print s }')
echo "instructions per request: $((total / n)) ($total over $n requests; profile: $d/cg.out*)"
