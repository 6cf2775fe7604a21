#!/bin/sh
# The c100k benchmark inside its guest (run once by a unit at boot): install the package, open
# the connections with the xtask client, measure, print "c100k: key=value" lines.
exec >/dev/ttyS0 2>&1
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() {
  echo "FAIL: $*"
  journalctl -u gatewayd --no-pager -o cat | tail -30
  echo "VMTEST-EXIT:1"; sync; systemctl poweroff --no-block; exit 1
}
sysctl -q -w net.ipv4.ip_local_port_range="1024 65535" net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535
apt-get install -y -q /opt/vmtest/gatewayd.deb > /tmp/apt.log 2>&1 || { cat /tmp/apt.log; fail "apt install"; }
gatewayd defaults | sed \
  -e 's/^workers = "auto"/workers = 2\nlog_format = "json"/' \
  -e 's/^bind = "127.0.0.1:8080"/bind = "0.0.0.0:80"\nbacklog = 65535/' > /etc/gatewayd/gatewayd.toml
printf '\n[server.limits]\nidle_timeout = "1h"\n' >> /etc/gatewayd/gatewayd.toml
systemctl restart gatewayd || fail "restart"
pid=$(systemctl show -p MainPID --value gatewayd)
curl -fsS http://127.0.0.1/demo/hello > /dev/null || fail "demo route"
rss() { awk '/^VmRSS/ {print $2}' /proc/$pid/status; }
echo "c100k: kernel=$(uname -r)"
echo "c100k: version=$(dpkg-query -W -f '${Version}' gatewayd)"
echo "c100k: rss_before_kb=$(rss)"
mkfifo /tmp/hold
exec 3<>/tmp/hold
HOME=/root /opt/vmtest/xtask c100k-client --connections @CONNECTIONS@ < /tmp/hold > /tmp/client.out 2>&1 &
client=$!
until grep -q open= /tmp/client.out; do
  kill -0 $client 2>/dev/null || { cat /tmp/client.out; fail "client"; }
  sleep 2
done
sleep 5
echo "c100k: rss_after_kb=$(rss)"
echo "c100k: fds=$(ls /proc/$pid/fd | wc -l)"
sed -n 's/^open=\([0-9]*\) seconds=\([0-9.]*\)/c100k: open=\1\nc100k: seconds=\2/p' /tmp/client.out
hey -z 20s -q 20 -c 1 http://127.0.0.1/demo/hello > /tmp/hey.out 2>&1
echo "c100k: p50=$(awk '/ 50% in/ {print $3 * 1000 " ms"}' /tmp/hey.out)"
echo "c100k: p99=$(awk '/ 99% in/ {print $3 * 1000 " ms"}' /tmp/hey.out)"
echo "c100k: hey_requests=$(awk '/\[200\]/ {print $2}' /tmp/hey.out)"
echo "c100k: hey_errors=$(awk '/Error distribution/ {on=1; next} on && /\[/ {gsub(/[][]/, "", $1); s += $1} END {print s + 0}' /tmp/hey.out)"
cat /tmp/hey.out
# Report first: closing 100,000 sockets under TCG takes minutes; nothing is measured after.
echo "VMTEST-EXIT:0"
sync
poweroff -f
