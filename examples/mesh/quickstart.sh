#!/usr/bin/env bash
# The l7mp mesh on one machine, in one command: builds l7mp, starts l7mp-control on its embedded store and two
# agents fed over xDS (a gateway and a backend), applies examples/mesh/*.yaml with l7mpctl, sends real traffic
# through the services (UDP -> gateway -> TCP -> backend -> Echo; WebSocket -> backend -> UNIX socket server) and
# prints what happened. It stays up until Ctrl-C, then stops everything and removes what it made.
#
#   bash examples/mesh/quickstart.sh          # stays up; try `l7mpctl get vsvc`, `l7mpctl agents` meanwhile
#   bash examples/mesh/quickstart.sh --once   # exits after the traffic (CI runs this)
#
# Ports (127.0.0.1): control plane 18000 (gRPC) and 18001 (/metrics), agents' admin APIs 18011 and 18012, UDP 9001,
# TCP 9002, WebSocket 8888; the UNIX socket /tmp/l7mp-transcoder.sock.
set -euo pipefail
cd "$(dirname "$0")/../.."
once=false
[ "${1:-}" = "--once" ] && once=true
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/l7mp/target}"
echo "== building l7mp-control, l7mpctl and l7mp-agent (release)"
cargo build --release -q -p l7mp-agent --bin l7mp-agent
cargo build --release -q -p l7mp-control --bin l7mp-control --bin l7mpctl
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" /tmp/l7mp-transcoder.sock
}
trap cleanup EXIT
trap 'exit 0' INT TERM

echo "== l7mp-control on 127.0.0.1:18000, embedded store in $work/store"
"$bin/l7mp-control" --listen 127.0.0.1:18000 --store "embedded:$work/store" --admin 127.0.0.1:18001 -l warn &
pids+=($!)
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:18001/ready', timeout=1)" 2>/dev/null && break
  sleep 0.1
done

# The UNIX socket service behind the WebSocket listener: an echo server that says who it is.
python3 - <<'PY' &
import os, socket, threading
path = "/tmp/l7mp-transcoder.sock"
if os.path.exists(path):
    os.unlink(path)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(path); srv.listen(16)
def serve(c):
    with c:
        while data := c.recv(65536):
            c.sendall(b"transcoded:" + data)
while True:
    c, _ = srv.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)

echo "listeners: []" > "$work/empty.yaml"
echo "== agents: gateway (app=gateway) and backend (app=backend, role=transcoder), fed by xDS"
"$bin/l7mp-agent" -c "$work/empty.yaml" --xds http://127.0.0.1:18000 --node-id gateway --labels app=gateway \
  --address 127.0.0.1 --admin 127.0.0.1:18011 -l warn &
pids+=($!)
"$bin/l7mp-agent" -c "$work/empty.yaml" --xds http://127.0.0.1:18000 --node-id backend \
  --labels app=backend,role=transcoder --address 127.0.0.1 --admin 127.0.0.1:18012 -l warn &
pids+=($!)
sleep 0.5

export L7MP_SERVER=http://127.0.0.1:18000
for f in examples/mesh/*.yaml; do
  echo "== l7mpctl apply -f $f"
  "$bin/l7mpctl" apply -f "$f"
done
echo "== l7mpctl get vsvc"
"$bin/l7mpctl" get vsvc
echo "== l7mpctl agents"
"$bin/l7mpctl" agents

python3 - <<'PY'
import base64, os, socket, struct, time, urllib.request, json
def udp(port, msg, tries=50):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2); s.connect(("127.0.0.1", port))
    for _ in range(tries):            # the configuration may still be on its way to the agents
        s.send(msg)
        try:
            return s.recv(65536)
        except socket.timeout:
            pass
    raise SystemExit(f"no answer on UDP {port}")
print("-- UDP 9001 -> gateway -> TCP 9002 -> backend -> Echo:", udp(9001, b"hello mesh"))

def ws(port, msg, tries=50):
    for _ in range(tries):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=3)
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(f"nothing listens on {port}")
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    mask = os.urandom(4)
    s.sendall(bytes([0x82, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
    b0, b1 = s.recv(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", s.recv(2))[0]
    data = b""
    while len(data) < n:
        data += s.recv(n - len(data))
    return data
print("-- WebSocket 8888 -> backend -> UNIX socket server:", ws(8888, b"a frame"))
sessions = json.loads(urllib.request.urlopen("http://127.0.0.1:18012/api/v1/sessions", timeout=3).read())
print("-- backend agent's sessions (its REST API):", [(s["source"]["origin"], s["status"]) for s in sessions])
PY

if $once; then
  echo "== done (--once)"
  exit 0
fi
echo "== the mesh is up: try  L7MP_SERVER=$L7MP_SERVER $bin/l7mpctl get targets  (Ctrl-C stops everything)"
wait
