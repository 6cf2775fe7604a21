# Usage: slow.py PORT N PATH SETTLE_SECONDS PIDS [BODY_BYTES]
# N clients with a 4 KiB receive buffer ask for PATH and read nothing; after SETTLE seconds the
# proxy's RSS and its established upstream connections are printed; then every client reads all.
import socket, sys, time, subprocess
port, n, path, settle, pids = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5].split(",")
size = int(sys.argv[6]) if len(sys.argv) > 6 else 1048576
def rss():
    t = 0
    for p in pids:
        for l in open(f'/proc/{p}/status'):
            if l.startswith('VmRSS:'): t += int(l.split()[1])
    return t
def upstream_conns():
    out = subprocess.run(['ss', '-Htn', 'state', 'established', '( dport = :18001 )'], capture_output=True, text=True).stdout
    return len([l for l in out.splitlines() if l.strip()])
before = rss()
socks = []
for i in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(('127.0.0.1', port)); s.sendall(f'GET {path} HTTP/1.1\r\nHost: h\r\n\r\n'.encode()); socks.append(s)
import urllib.request
def active():
    try:
        m = urllib.request.urlopen('http://127.0.0.1:19092/metrics', timeout=5).read().decode()
        return sum(float(l.rsplit(' ',1)[1]) for l in m.splitlines() if l.startswith('gateway_upstream_target_active_requests'))
    except Exception:
        return -1
t0 = time.time(); peak = 0
while time.time() - t0 < settle:
    time.sleep(2); r = rss(); peak = max(peak, r)
    print(f'  t={time.time()-t0:.0f}s rss_kib={r} upstream_established={upstream_conns()} active_requests={active()}', flush=True)
print(f'clients={n} rss_before_kib={before} rss_peak_kib={peak} rss_end_kib={rss()} upstream_established={upstream_conns()}', flush=True)
total = 0
for s in socks:
    s.setblocking(True); s.settimeout(60); got = 0; buf = b''
    while b'\r\n\r\n' not in buf: buf += s.recv(65536)
    head, body = buf.split(b'\r\n\r\n', 1); got = len(body)
    while got < size:
        d = s.recv(1 << 20)
        if not d: break
        got += len(d)
    total += got; s.close()
print(f'read_all_ok={total == n*size} rss_after_kib={rss()}', flush=True)
