#!/bin/sh
# The `systemd` vm-test scenario, run inside a booted Debian bookworm (systemd as PID 1) by
# vmtest.service at every boot: phase 1 installs and exercises the package, reboots; phase 2
# checks it came back, removes and purges it, powers off. Everything an operator would type.
# Lines starting "ok:" are the report; VMTEST-EXIT:<code> is the verdict.

exec >/dev/ttyS0 2>&1
P=/opt/vmtest
STATE=/var/lib/vmtest
mkdir -p $STATE
NIC=$(ip -o link show | awk -F': ' '$2 != "lo" {print $2; exit}')
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

finish() {
  echo "VMTEST-EXIT:$1"
  sync
  systemctl poweroff --no-block
  exit "$1"
}
fail() {
  echo "FAIL: $*"
  systemctl status gatewayd --no-pager -l 2>&1 | tail -20
  journalctl -u gatewayd --no-pager -o cat 2>&1 | tail -40
  finish 1
}
ok() { echo "ok: $*"; }
# until CMD succeeds, at most $1 tenths of a second
wait_for() {
  n=$1; shift
  i=0
  until "$@" >/dev/null 2>&1; do
    i=$((i+1)); [ $i -lt "$n" ] || return 1; sleep 0.1
  done
}
get() { curl -fsS --max-time 10 "$@"; }
main_pid() { systemctl show -p MainPID --value gatewayd; }
# The embedded defaults (demo upstream and route) on the public ports, JSON logs, the XDP guard
# on the virtio NIC, plus "$1".
config() {
  gatewayd defaults | sed \
    -e 's/^workers = "auto"/workers = 2\nlog_format = "json"\ndrain_timeout = "20s"/' \
    -e 's/^bind = "127.0.0.1:8080"/bind = "0.0.0.0:80"/' \
    -e 's/^bind = "127.0.0.1:9090"/bind = "0.0.0.0:9090"/'
  printf '\n[xdp]\nenabled = true\ninterfaces = ["%s"]\n\n%s\n' "$NIC" "$1"
}
# hey at a steady rate (4 clients x 25/s), a new connection per request, while "$@" runs;
# zero errors and only 200s allowed.
under_load() {
  label=$1; shift
  hey -z 20s -c 4 -q 25 -disable-keepalive http://127.0.0.1/demo/hello > $STATE/hey.out 2>&1 &
  hey_pid=$!
  sleep 5
  "$@" || fail "$label: the command failed"
  wait $hey_pid
  grep -q "Error distribution" $STATE/hey.out && { cat $STATE/hey.out; fail "$label: requests failed"; }
  codes=$(awk '/Status code distribution/ {on=1; next} on && /\[/ {print}' $STATE/hey.out)
  echo "$codes" | grep -q '\[200\]' || { cat $STATE/hey.out; fail "$label: no 200s"; }
  echo "$codes" | grep -v '\[200\]' | grep -q '\[' && { cat $STATE/hey.out; fail "$label: other statuses"; }
  total=$(echo "$codes" | awk '{s += $2} END {print s}')
  ok "$label under load: $total requests, all 200, no connection error"
}

phase=$(cat $STATE/phase 2>/dev/null || echo 1)
echo "vm: systemd scenario phase $phase on $(uname -r), NIC $NIC"

if [ "$phase" = 1 ]; then
  apt-get install -y -q $P/gatewayd_old.deb > $STATE/apt.log 2>&1 || { cat $STATE/apt.log; fail "apt install"; }
  ok "apt install ./$(basename $(readlink -f $P/gatewayd_old.deb))"
  systemctl is-enabled -q gatewayd || fail "not enabled by the package"
  systemctl is-active -q gatewayd || fail "not active after install"
  [ "$(systemctl show -p StatusText --value gatewayd)" = serving ] || fail "no READY=1 status"
  # Active only after READY=1: systemd logs "Started" after the daemon's ready line.
  journalctl -b -o cat -u gatewayd -u init.scope | grep -n 'gatewayd ready\|Started gatewayd' > $STATE/order
  head -1 $STATE/order | grep -q 'gatewayd ready' || { cat $STATE/order; fail "active before READY=1"; }
  ok "enabled, active only after READY=1 (Type=notify)"
  stat -c '%U:%G %a' /etc/gatewayd/gatewayd.toml | grep -qx 'root:gatewayd 640' || fail "config ownership $(stat -c '%U:%G %a' /etc/gatewayd/gatewayd.toml)"
  id gatewayd >/dev/null || fail "no gatewayd user"
  ok "config root:gatewayd 0640, system user gatewayd"

  config "" > /etc/gatewayd/gatewayd.toml
  systemctl restart gatewayd || fail "restart with the test config"
  get http://127.0.0.1/demo/hello | grep -q "Hello from the gatewayd demo upstream" || fail "demo route"
  get http://127.0.0.1:9090/metrics | grep -q 'gateway_http_requests_total{route="demo"' || fail "metrics"
  ok "curl demo route and :9090/metrics"
  journalctl -u gatewayd -o cat | grep '^{' > $STATE/json
  jq -e . $STATE/json > /dev/null || fail "journal lines are not JSON"
  jq -s -e 'any(.[]; .message == "gatewayd ready")' $STATE/json > /dev/null || fail "no ready line in the journal"
  ok "journal: $(wc -l < $STATE/json) JSON lines parse, startup lines present"
  mode=$(jq -r 'select(.message == "xdp guard attached") | .mode' $STATE/json | tail -1)
  [ -n "$mode" ] || fail "the XDP guard did not attach"
  ip link show dev "$NIC" | grep -q 'xdp' || fail "no XDP program on $NIC"
  ok "XDP guard attached to virtio NIC $NIC in mode $mode ($(ip link show dev "$NIC" | grep -o 'xdp[a-z]*' | head -1))"
  jq -s -e 'any(.[]; .supported == true)' $STATE/json > /dev/null || fail "kTLS not supported under the hardened unit"
  ok "kTLS available to the hardened service ($(jq -r 'select(.supported == true) | .message' $STATE/json | tail -1 | cut -c1-60))"
  score=$(systemd-analyze security gatewayd 2>/dev/null | sed -n 's/.*Overall exposure level for gatewayd.service: \([0-9.]*\).*/\1/p')
  awk -v s="$score" 'BEGIN {exit !(s != "" && s <= 3.0)}' || fail "exposure score $score > 3.0"
  ok "systemd-analyze security gatewayd: $score"

  config '[[routes]]
name = "second"
service = "demo"
paths = ["/second"]
strip_path = true
auth = "none"' > /etc/gatewayd/gatewayd.toml
  systemctl reload gatewayd || fail "reload (good)"
  wait_for 100 get http://127.0.0.1/second/hello || fail "new route after reload"
  ok "reload with a good file: new route served"
  cp /etc/gatewayd/gatewayd.toml $STATE/good.toml
  printf '\n[server.limits]\nno_such_key = 1\n' >> /etc/gatewayd/gatewayd.toml
  systemctl reload gatewayd
  wait_for 100 sh -c "journalctl -u gatewayd -o cat | grep -q 'gatewayd.toml:[0-9]*:[0-9]*'" || fail "bad reload not located in the journal"
  get http://127.0.0.1/second/hello > /dev/null || fail "old config stopped serving after a bad reload"
  systemctl is-active -q gatewayd || fail "inactive after a bad reload"
  ok "reload with a bad file: journal names $(journalctl -u gatewayd -o cat | grep -o 'gatewayd.toml:[0-9]*:[0-9]*' | tail -1), old config serves, unit active"
  cp $STATE/good.toml /etc/gatewayd/gatewayd.toml
  systemctl reload gatewayd

  before=$(main_pid)
  restarts=$(systemctl show -p NRestarts --value gatewayd)
  kill -STOP "$before"
  wait_for 1500 sh -c "[ \$(systemctl show -p NRestarts --value gatewayd) -gt $restarts ] && systemctl is-active -q gatewayd" || fail "the watchdog did not restart a stopped daemon"
  wait_for 200 get http://127.0.0.1/demo/hello || fail "not serving after the watchdog restart"
  ok "SIGSTOP: watchdog killed pid $before, restarted as $(main_pid)"

  (get http://127.0.0.1/demo/delay/4000 > $STATE/slow.out; echo $? > $STATE/slow.rc) &
  sleep 1
  systemctl stop gatewayd
  wait
  [ "$(cat $STATE/slow.rc)" = 0 ] || fail "stop did not drain the in-flight request"
  ok "systemctl stop drained an in-flight request (4 s) before exiting"
  systemctl start gatewayd || fail "start"

  under_load "systemctl restart" systemctl restart gatewayd
  upgrade() { apt-get install -y -q -o Dpkg::Options::=--force-confold $P/gatewayd_new.deb > $STATE/apt.log 2>&1 || { cat $STATE/apt.log; return 1; }; }
  pid=$(main_pid)
  under_load "upgrade to $(basename $(readlink -f $P/gatewayd_new.deb))" upgrade
  [ "$(main_pid)" != "$pid" ] || fail "the upgrade did not restart the service"
  grep -q 'handed over by systemd' $STATE/json || journalctl -u gatewayd -o cat | grep -q 'handed over by systemd' || fail "no socket handover logged"
  ok "upgraded to $(dpkg-query -W -f '${Version}' gatewayd); edited config kept: $(grep -c second /etc/gatewayd/gatewayd.toml) route(s) named second"

  echo 2 > $STATE/phase
  sync
  echo "vm: rebooting"
  systemctl reboot
  exit 0
fi

if [ "$phase" = 2 ]; then
  wait_for 600 systemctl is-active -q gatewayd || fail "not active after reboot"
  systemctl is-enabled -q gatewayd || fail "not enabled after reboot"
  get http://127.0.0.1/second/hello > /dev/null || fail "not serving after reboot"
  ok "reboot: enabled, active, serving"
  apt-get remove -y -q gatewayd > $STATE/apt.log 2>&1 || { cat $STATE/apt.log; fail "apt remove"; }
  systemctl is-active -q gatewayd && fail "still active after remove"
  [ -f /etc/gatewayd/gatewayd.toml ] || fail "remove deleted the config"
  [ -d /var/log/gatewayd ] || fail "remove deleted the logs"
  ok "apt remove: stopped; config and logs kept"
  apt-get purge -y -q gatewayd > $STATE/apt.log 2>&1 || { cat $STATE/apt.log; fail "apt purge"; }
  [ -e /etc/gatewayd ] && fail "purge left /etc/gatewayd"
  [ -e /var/log/gatewayd ] && fail "purge left /var/log/gatewayd"
  dpkg-statoverride --list | grep -q gatewayd && fail "purge left a statoverride"
  ok "apt purge: config, logs, state and overrides gone"
  finish 0
fi
