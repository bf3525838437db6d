#!/usr/bin/env bash
# Builds the agent, runs it on the example configurations (UDP echo, TCP -> UNIX socket, UDP -> JSONEncap/Decap,
# an HTTP reverse proxy) and sends real traffic through each, printing what came back. The UDP echo agent also serves
# the admin API on 127.0.0.1:9099: the demo adds a TCP listener through it, sends through it, lists the sessions and
# reads a metric. Stops the agent (SIGTERM) at the end and checks it left no socket file behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/l7mp/target}"
echo "== building l7mp-agent (release)"
cargo build --release -q -p l7mp-agent
AGENT="$CARGO_TARGET_DIR/release/l7mp-agent"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
# The HTTP example proxies to an HTTP server on 127.0.0.1:9041: Python's, serving this folder.
python3 -m http.server 9041 --bind 127.0.0.1 --directory examples >/dev/null 2>&1 &
pids+=($!)
for cfg in udp-echo tcp-to-unix udp-jsonencap http-proxy; do
  echo "== starting: $AGENT -c examples/$cfg.yaml"
  extra=()
  [ "$cfg" = udp-echo ] && extra=(--admin 127.0.0.1:9099)
  "$AGENT" -c "examples/$cfg.yaml" -l warn "${extra[@]}" &
  pids+=($!)
done
sleep 0.5
python3 - <<'PY'
import socket, json
def udp(port, msgs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.connect(("127.0.0.1", port))
    for m in msgs: s.send(m)
    return [s.recv(65536) for _ in msgs]
print("-- UDP echo (port 9001):", udp(9001, [b"hello", b"l7mp"]))
t = socket.create_connection(("127.0.0.1", 9010), timeout=3)
t.sendall(b"through TCP, a UNIX socket and back\n"); t.shutdown(socket.SHUT_WR)
data = b""
while chunk := t.recv(65536): data += chunk
print("-- TCP -> UNIX socket -> Echo (port 9010):", data)
print("-- UDP -> JSONEncap -> UDP -> JSONDecap (port 9020):", udp(9020, [b"datagram one", b"two"]))
import urllib.request
r = urllib.request.urlopen("http://127.0.0.1:9040/demo.sh", timeout=3)
print("-- HTTP reverse proxy (port 9040 -> 9041): status", r.status, "server", r.headers["server"], "-",
      len(r.read()), "bytes of demo.sh")
r = urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:9040/echo", data=b"echoed by the agent"), timeout=3)
print("-- HTTP -> Echo (port 9040/echo):", r.read())
api = "http://127.0.0.1:9099/api/v1"
body = json.dumps({"listener": {"name": "tcp-echo", "spec": {"protocol": "TCP", "port": 9002},
                                "rules": [{"action": {"route": {"destination": "echo"}}}]}}).encode()
r = urllib.request.urlopen(urllib.request.Request(api + "/listeners", data=body,
                           headers={"Content-Type": "application/json"}), timeout=3)
print("-- REST: POST /api/v1/listeners (a TCP echo on 9002):", json.loads(r.read()))
t = socket.create_connection(("127.0.0.1", 9002), timeout=3)
t.sendall(b"added at run time")
print("-- TCP echo (port 9002):", t.recv(65536))
sessions = json.loads(urllib.request.urlopen(api + "/sessions", timeout=3).read())
print("-- REST: GET /api/v1/sessions:", [(s["source"]["origin"], s["status"], s["traffic"]["from_source"]["bytes"])
                                          for s in sessions])
t.close()
metrics = urllib.request.urlopen("http://127.0.0.1:9099/metrics", timeout=3).read().decode()
print("-- /metrics:", [l for l in metrics.splitlines() if l.startswith("listener_requests_total")])
PY
echo "== stopping the agents (SIGTERM)"
for p in "${pids[@]}"; do kill -TERM "$p"; done
wait
pids=()
test ! -e /tmp/l7mp-example.sock && echo "== UNIX socket file removed; done"
