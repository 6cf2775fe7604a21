# Shared by the proxy measurement scripts (sourced): the nginx upstream answering "ok", gatewayd's
# one-worker proxy config in front of it, and waiting for a port.

# up_conf DIR PORT [WORKER_CONNECTIONS]: nginx upstream config on 127.0.0.1:PORT, files in DIR.
up_conf() {
  cat <<C
worker_processes 1; pid $1/up.pid; error_log $1/up.err; daemon off;
events { worker_connections ${3:-4096}; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { return 200 "ok"; } } }
C
}

# gw_conf PORT METRICS_PORT UPSTREAM_PORT: gatewayd, 1 worker, every path to the upstream.
gw_conf() {
  cat <<C
[server]
workers = 1
log_level = "warn"
[[listeners]]
name = "main"
bind = "127.0.0.1:$1"
[metrics]
bind = "127.0.0.1:$2"
[admin]
socket = ""
[[services]]
name = "up"
targets = ["127.0.0.1:$3"]
max_idle_per_target = 64
[[routes]]
name = "all"
service = "up"
paths = ["/"]
auth = "none"
C
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (60 s at most, then exit 1).
wait_port() {
  for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done
  echo "port $1 not up" >&2; exit 1
}
