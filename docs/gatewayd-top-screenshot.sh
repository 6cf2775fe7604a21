#!/bin/sh
# Remakes docs/gatewayd-top.png (a one-off by hand, not a test): a debug gatewayd on the demo
# upstream with an admin socket, some traffic (a few 404s and 5xx too), `gatewayd top` in an
# 80×24 tmux pane, its capture with colours rendered by docs/ansi_to_png.py.
# Needs: cargo build, tmux, curl, python3-pil, fonts-dejavu-core (Debian's python3: /usr/bin).
set -eu
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
gw="" loader=""
trap 'kill "$gw" "$loader" 2>/dev/null; tmux -S "$dir/tmux.sock" kill-server 2>/dev/null; rm -rf "$dir"' EXIT
# Free loopback ports (the fixed ones may be taken on a shared machine).
set -- $(/usr/bin/python3 -c 'import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
listen=$1 metrics=$2 demo=$3
cat > "$dir/gatewayd.toml" <<TOML
[server]
workers = 2
[[listeners]]
name = "public"
bind = "127.0.0.1:$listen"
[metrics]
bind = "127.0.0.1:$metrics"
[admin]
socket = "$dir/admin.sock"
[auth]
default_policy = "none"
[demo]
enabled = true
bind = "127.0.0.1:$demo"
[[services]]
name = "demo"
targets = ["127.0.0.1:$demo"]
[[services]]
name = "down"
targets = ["127.0.0.1:1"]
[[routes]]
name = "orders-api"
service = "demo"
paths = ["/orders"]
[[routes]]
name = "users-api"
service = "demo"
paths = ["/users"]
[[routes]]
name = "legacy-billing"
service = "down"
paths = ["/billing"]
TOML
target/debug/gatewayd --config "$dir/gatewayd.toml" 2>"$dir/gatewayd.log" &
gw=$!
until curl -sf http://127.0.0.1:$metrics/readyz >/dev/null; do
    kill -0 "$gw" || { cat "$dir/gatewayd.log"; exit 1; }
    sleep 0.2
done
load() {
    i=0
    while [ $i -lt 400 ]; do
        curl -s -o /dev/null http://127.0.0.1:$listen/orders/$i
        [ $((i % 2)) -eq 0 ] && curl -s -o /dev/null http://127.0.0.1:$listen/users/$i
        [ $((i % 9)) -eq 0 ] && curl -s -o /dev/null http://127.0.0.1:$listen/billing
        [ $((i % 25)) -eq 0 ] && curl -s -o /dev/null http://127.0.0.1:$listen/nowhere
        i=$((i + 1))
    done
}
load &
loader=$!
tmux -S "$dir/tmux.sock" -f /dev/null new-session -d -s top -x 80 -y 24 \
    target/debug/gatewayd top --admin-socket "$dir/admin.sock"
sleep 4
tmux -S "$dir/tmux.sock" capture-pane -e -p -t top > "$dir/top.ansi"
/usr/bin/python3 docs/ansi_to_png.py "$dir/top.ansi" docs/gatewayd-top.png 80 24
ls -l docs/gatewayd-top.png
