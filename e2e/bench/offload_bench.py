#!/usr/bin/env python3
"""eBPF offload benchmark: UDP (tc) and TCP (sockmap splice) through several data paths, same run, ratios in
markdown tables.

Topology (created here, deleted at the end, also on error and Ctrl-C): three network namespaces on two veth pairs,

    client ns  10.91.0.1 --veth-- 10.91.0.2  middle ns  10.92.0.1 --veth-- 10.92.0.2  server ns

IPv4 forwarding on in the middle namespace (all interfaces), the client and server route everything via the middle,
transmit checksum offload off on the client's and the server's veth ends (SIOCETHTOOL, as ebpf/tests do), so every
datagram on the wire carries a complete checksum and the receivers verify what the eBPF program patched.

Paths (rows), each against the same iperf3 server (server ns, port 5201):

- `direct`: the client sends to the server's address; the middle namespace's kernel routes it (no proxy).
- `agent (user space)`: l7mp-agent in the middle ns, `--offload off --threads 1`, a UDP listener on 9000 -> UDP
  cluster to the server, plus a TCP listener on 9000 -> TCP cluster for iperf3's control connection.
- `agent (eBPF offload)`: the same with `--offload force --offload-interfaces <both middle veths>`; after the run the
  session listing (`GET /api/v1/sessions` on `--admin 127.0.0.1:PORT` inside the middle ns) says how many datagrams
  the kernel carried (`offload.kernel`) out of the session's `traffic`.
- `nginx stream`: nginx (stream module, one worker) in the middle ns with a TCP and a `udp` server on 9000, as
  bench.py configures it. Skipped with a note when nginx or its stream module is missing.

Loads: iperf3 `-u -l 64` (64-byte UDP payloads) at a fixed offered rate (`-b 25.6M`, 50k packets/s) and as fast as
one iperf3 sender can (`-b 0`), each bounded in time (`--seconds`, default 5; `--smoke`: 1). Each (path, load) gets a
fresh proxy and a fresh one-off iperf3 server. Reported per row: packets/s the server received (iperf3's receiver
count minus lost), loss, the ratio to `direct` and to `agent (user space)` for the same load, the proxy's CPU time
(utime+stime+cutime+cstime of its process tree from /proc/PID/stat, before/after) per million received packets, and
the CPU of the two iperf3 processes (getrusage of our reaped children) and the total (proxy + iperf3 + the
ksoftirqd threads) per million received packets. The total matters because a kernel fast path moves work out of the
proxy into softirq context, and on veth that runs in the sending process's context: it is charged to the iperf3
client (or ksoftirqd when deferred), not to the proxy.

TCP (second table), same rows (the offload row is the sockmap splice), against the same server namespace:
`bulk` is one iperf3 TCP stream (`-t seconds`), reported in Gbit/s received and proxy CPU seconds per GB; `round
trips` is one connection doing 64-byte request/answer exchanges back to back for `seconds` (a Python client, against
a Python echo server on port 7001, TCP_NODELAY), reported in round trips/s and proxy CPU per 100k round trips. For
the splice row the agent's metrics say how many of the bytes the kernel carried (`l7mp_offload_bytes_total` vs the
listener's `l7mp_listener_bytes_total`).

Targets (issue 8): offloaded UDP >= 0.8x the direct forwarding rate and >= 3x the user-space path; the agent's CPU
for an offloaded flow ~ 0.

Exit status: 0 when every row that could run delivered traffic (and the offload row's kernel carried some of it);
1 when a row that should work delivered nothing, failed, or the offload never engaged; 2 on a usage error or when the
namespaces cannot be set up (not root). With `--offload force` failing to load BPF, the offload row is skipped with a
note unless L7MP_REQUIRE_EBPF=1 (CI), which makes it a failure.

Usage: python3 e2e/bench/offload_bench.py [--smoke] [--seconds S] [--agent PATH] [--out FILE]
Python standard library only; needs root, iproute2 and iperf3 (nginx with libnginx-mod-stream optional).
"""

import argparse
import atexit
import ctypes
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

TAG = "l7ob%d" % os.getpid()
NS = {"cl": TAG + "c", "mid": TAG + "m", "sv": TAG + "s"}
# veth names (<= 15 chars): client end, middle's client-side end, middle's server-side end, server end
IF = {"cl": "c%d" % os.getpid(), "mc": "mc%d" % os.getpid(), "ms": "ms%d" % os.getpid(), "sv": "s%d" % os.getpid()}
ADDR = {"cl": "10.91.0.1", "mc": "10.91.0.2", "ms": "10.92.0.1", "sv": "10.92.0.2"}
PROXY_PORT = 9000
IPERF_PORT = 5201
# small-message round trips: the agent/nginx listen here and forward to the echo server on ECHO_PORT
RTT_PORT = 9001
ECHO_PORT = 7001
RTT_LEN = 64
ADMIN_PORT = 18960
UDP_LEN = 64
FIXED_RATE = "25.6M"  # 64 B * 8 * 50,000/s
LOADS = [("50k pps", FIXED_RATE), ("unlimited", "0")]
ROWS = ["direct", "agent (user space)", "agent (eBPF offload)", "nginx stream"]
TCP_LOADS = ["bulk", "round trips"]
CLK_TCK = os.sysconf("SC_CLK_TCK")

_SPAWNED = []
_NS_MADE = []
_TMP = []
_CLEANED = False


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------
# processes, namespaces, cleanup
# --------------------------------------------------------------------------

def run(cmd, check=True, timeout=20):
    cp = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), cp.stderr.decode("utf-8", "replace").strip()))
    return cp


def nsexec(ns):
    return ["ip", "netns", "exec", NS[ns]]


def spawn(cmd, logpath):
    with open(logpath, "ab") as f:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    _SPAWNED.append(p)
    return p


def _children():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                s = f.read().decode("ascii", "replace")
            ppid = int(s[s.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(root):
    kids, out, todo = _children(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def stop(proc, grace=3.0):
    """SIGTERM to the process and its descendants (by PID), SIGKILL after `grace` seconds."""
    if proc is None:
        return
    pids = process_tree(proc.pid)
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        pass
    if proc in _SPAWNED:
        _SPAWNED.remove(proc)


def cleanup():
    global _CLEANED
    if _CLEANED:
        return
    _CLEANED = True
    for p in list(_SPAWNED):
        stop(p, grace=1.0)
    for ns in reversed(_NS_MADE):
        # anything still running in our own namespaces was started by us
        try:
            pids = run(["ip", "netns", "pids", ns], check=False, timeout=5).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            run(["ip", "netns", "del", ns], check=False, timeout=10)
        except (OSError, subprocess.SubprocessError):
            pass
    del _NS_MADE[:]
    for d in _TMP:
        shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, _frame):
    log("\noffload_bench.py: signal %d, cleaning up" % signum)
    cleanup()
    sys.exit(128 + signum)


def tx_checksum_off(ns, dev):
    """ETHTOOL_STXCSUM 0 on `dev` inside `ns` (ethtool -K dev tx off, without ethtool)."""
    code = (
        "import ctypes,fcntl,socket,struct,sys\n"
        "v=ctypes.create_string_buffer(struct.pack('II',0x17,0),8)\n"
        "r=struct.pack('16sP16s',sys.argv[1].encode(),ctypes.addressof(v),b'')\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "fcntl.ioctl(s.fileno(),0x8946,r)\n"
    )
    run(nsexec(ns) + [sys.executable, "-c", code, dev])


def setup_network():
    for ns in ("cl", "mid", "sv"):
        run(["ip", "netns", "add", NS[ns]])
        _NS_MADE.append(NS[ns])
        run(["ip", "-n", NS[ns], "link", "set", "lo", "up"])
    run(["ip", "link", "add", IF["cl"], "netns", NS["cl"], "type", "veth", "peer", "name", IF["mc"],
         "netns", NS["mid"]])
    run(["ip", "link", "add", IF["ms"], "netns", NS["mid"], "type", "veth", "peer", "name", IF["sv"],
         "netns", NS["sv"]])
    for ns, dev in (("cl", "cl"), ("mid", "mc"), ("mid", "ms"), ("sv", "sv")):
        run(["ip", "-n", NS[ns], "addr", "add", ADDR[dev] + "/24", "dev", IF[dev]])
        run(["ip", "-n", NS[ns], "link", "set", IF[dev], "up"])
    run(["ip", "-n", NS["cl"], "route", "add", "default", "via", ADDR["mc"]])
    run(["ip", "-n", NS["sv"], "route", "add", "default", "via", ADDR["ms"]])
    for key in ("all", "default", IF["mc"], IF["ms"]):
        run(nsexec("mid") + ["sysctl", "-qw", "net.ipv4.conf.%s.forwarding=1" % key])
    tx_checksum_off("cl", IF["cl"])
    tx_checksum_off("sv", IF["sv"])


# --------------------------------------------------------------------------
# /proc helpers
# --------------------------------------------------------------------------

def tree_cpu_ticks(root):
    total = 0
    for pid in process_tree(root):
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                s = f.read().decode("ascii", "replace")
            total += sum(int(x) for x in s[s.rindex(")") + 2:].split()[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return total


def ksoftirqd_ticks(prefixes=("ksoftirqd/",)):
    """utime+stime of the ksoftirqd/N threads (softirq work deferred out of the context that raised it), or of the
    kernel threads whose names start with any of `prefixes`."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                s = f.read().decode("ascii", "replace")
            if not s[s.index("(") + 1:].startswith(prefixes):
                continue
            total += sum(int(x) for x in s[s.rindex(")") + 2:].split()[11:13])
        except (OSError, ValueError, IndexError):
            pass
    return total


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def ns_listening(pid, port, udp=False):
    """Whether the network namespace of `pid` has a TCP listener (or a bound UDP socket) on `port`."""
    hexport = ":%04X" % port
    for kind in (("udp", "udp6") if udp else ("tcp", "tcp6")):
        try:
            with open("/proc/%d/net/%s" % (pid, kind)) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1].endswith(hexport) and (udp or parts[3] == "0A"):
                        return True
        except (OSError, StopIteration):
            pass
    return False


def wait_listening(proc, ports, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if all(ns_listening(proc.pid, p, udp) for p, udp in ports):
            return True
        time.sleep(0.05)
    return False


def tail(path, n=10):
    try:
        with open(path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# the agent's admin API from inside the middle namespace (setns on a thread of our own)
# --------------------------------------------------------------------------

_LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_ns(ns, fn):
    box = {}

    def body():
        try:
            fd = os.open("/run/netns/" + NS[ns], os.O_RDONLY)
            try:
                if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            box["v"] = fn()
        except Exception as e:  # noqa: BLE001 (re-raised in the caller)
            box["e"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout=15)
    if "e" in box:
        raise box["e"]
    return box.get("v")


def api_get(path):
    def call():
        c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=5)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, json.loads(r.read().decode("utf-8") or "null")
        finally:
            c.close()
    return in_ns("mid", call)


def offload_counters():
    """Sums over the UDP sessions: (traffic up, traffic down, kernel up, kernel down, states)."""
    code, body = api_get("/api/v1/sessions")
    if code != 200 or not isinstance(body, list):
        raise RuntimeError("GET /api/v1/sessions: %s %s" % (code, body))
    tot = [0, 0, 0, 0]
    states = []
    for s in body:
        off = s.get("offload")
        if not isinstance(off, dict):
            continue
        tr = s.get("traffic") or {}
        k = off.get("kernel") or {}
        tot[0] += int((tr.get("from_source") or {}).get("messages", 0))
        tot[1] += int((tr.get("to_source") or {}).get("messages", 0))
        tot[2] += int((k.get("from_source") or {}).get("messages", 0))
        tot[3] += int((k.get("to_source") or {}).get("messages", 0))
        states.append(off.get("state"))
    return tot, states


# --------------------------------------------------------------------------
# proxies
# --------------------------------------------------------------------------

class Skip(Exception):
    pass


def agent_yaml():
    sv = ADDR["sv"]
    return (
        "admin: {log_level: warn}\n"
        "listeners:\n"
        "  - name: tcp-in\n"
        "    spec: {protocol: TCP, port: %d}\n"
        "    rules: [{action: {route: {destination: tcp-up}}}]\n"
        "  - name: udp-in\n"
        "    spec: {protocol: UDP, port: %d}\n"
        "    rules: [{action: {route: {destination: udp-up}}}]\n"
        "  - name: rtt-in\n"
        "    spec: {protocol: TCP, port: %d}\n"
        "    rules: [{action: {route: {destination: echo-up}}}]\n"
        "clusters:\n"
        "  - name: tcp-up\n"
        "    spec: {protocol: TCP, port: %d}\n"
        "    endpoints: [{spec: {address: %s}}]\n"
        "  - name: udp-up\n"
        "    spec: {protocol: UDP, port: %d}\n"
        "    endpoints: [{spec: {address: %s}}]\n"
        "  - name: echo-up\n"
        "    spec: {protocol: TCP, port: %d}\n"
        "    endpoints: [{spec: {address: %s}}]\n"
    ) % (PROXY_PORT, PROXY_PORT, RTT_PORT, IPERF_PORT, sv, IPERF_PORT, sv, ECHO_PORT, sv)


def find_nginx_stream_module():
    for d in ("/usr/lib/nginx/modules", "/usr/share/nginx/modules", "/usr/lib64/nginx/modules",
              "/etc/nginx/modules"):
        p = os.path.join(d, "ngx_stream_module.so")
        if os.path.exists(p):
            return p
    return None


def start_proxy(row, workdir, agent):
    """Starts the row's proxy in the middle ns; returns (Popen, log path) or raises Skip/RuntimeError."""
    if row == "nginx stream":
        if not shutil.which("nginx"):
            raise Skip("nginx not installed")
        mod = find_nginx_stream_module()
        if not mod:
            raise Skip("nginx stream module (ngx_stream_module.so) not found (apt-get install libnginx-mod-stream)")
        d = os.path.join(workdir, "nginx")
        os.makedirs(d, exist_ok=True)
        conf = (
            "load_module %s;\nworker_processes 1;\ndaemon off;\npid %s/nginx.pid;\n"
            "error_log %s/error.log warn;\nevents { worker_connections 8192; }\nstream {\n"
            "    server { listen %s:%d; proxy_pass %s:%d; }\n"
            "    server { listen %s:%d udp; proxy_pass %s:%d; proxy_timeout 60s; }\n"
            "    server { listen %s:%d; proxy_pass %s:%d; }\n}\n"
        ) % (mod, d, d, ADDR["mc"], PROXY_PORT, ADDR["sv"], IPERF_PORT, ADDR["mc"], PROXY_PORT,
             ADDR["sv"], IPERF_PORT, ADDR["mc"], RTT_PORT, ADDR["sv"], ECHO_PORT)
        cfg = os.path.join(d, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(conf)
        logp = os.path.join(d, "stderr.log")
        p = spawn(nsexec("mid") + ["nginx", "-p", d + "/", "-c", cfg, "-e", os.path.join(d, "error.log")], logp)
        if not wait_listening(p, [(PROXY_PORT, False), (PROXY_PORT, True), (RTT_PORT, False)]):
            msg = tail(logp) + tail(os.path.join(d, "error.log"))
            stop(p)
            raise RuntimeError("nginx did not start: " + msg)
        return p, logp
    cfg = os.path.join(workdir, "agent.yaml")
    with open(cfg, "w") as f:
        f.write(agent_yaml())
    mode = "force" if row == "agent (eBPF offload)" else "off"
    logp = os.path.join(workdir, "agent-%s.log" % mode)
    with open(logp, "w"):
        pass
    cmd = nsexec("mid") + [agent, "-c", cfg, "-l", "warn", "--threads", "1", "--offload", mode,
                           "--admin", "127.0.0.1:%d" % ADMIN_PORT]
    if mode == "force":
        cmd += ["--offload-interfaces", "%s,%s" % (IF["mc"], IF["ms"]), "--offload-tcp"]
    p = spawn(cmd, logp)
    if not wait_listening(p, [(PROXY_PORT, False), (PROXY_PORT, True), (RTT_PORT, False), (ADMIN_PORT, False)]):
        stop(p)
        text = tail(logp, 20)
        if mode == "force" and "eBPF offload cannot start" in text and os.environ.get("L7MP_REQUIRE_EBPF") != "1":
            raise Skip("the kernel fast path cannot start here: " + text.strip().splitlines()[-1])
        raise RuntimeError("the agent did not start (--offload %s):\n%s" % (mode, text))
    return p, logp


# --------------------------------------------------------------------------
# one measurement
# --------------------------------------------------------------------------

def iperf(workdir, target, seconds, rate, proxy=None):
    """iperf3 -u -l 64 from the client ns to `target`:PROXY/IPERF port, against a fresh iperf3 server."""
    srv_log = os.path.join(workdir, "iperf3-server.log")
    srv = spawn(nsexec("sv") + ["iperf3", "-s", "-1", "-B", ADDR["sv"], "-p", str(IPERF_PORT)], srv_log)
    try:
        if not wait_listening(srv, [(IPERF_PORT, False)], timeout=5):
            return None, "iperf3 server did not start: " + tail(srv_log)
        port = IPERF_PORT if target == ADDR["sv"] else PROXY_PORT
        cmd = nsexec("cl") + ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J",
                              "--connect-timeout", "3000", "-u", "-l", str(UDP_LEN), "-b", rate]
        cpu0 = tree_cpu_ticks(proxy.pid) if proxy else 0
        k0 = ksoftirqd_ticks()
        t0 = time.time()
        cl = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
        _SPAWNED.append(cl)
        try:
            out, err = cl.communicate(timeout=seconds + 10)
        except subprocess.TimeoutExpired:
            stop(cl, grace=1.0)
            return None, "iperf3 client timed out"
        if cl in _SPAWNED:
            _SPAWNED.remove(cl)
        wall = time.time() - t0
        cpu1 = tree_cpu_ticks(proxy.pid) if proxy else 0
        k1 = ksoftirqd_ticks()
        try:
            d = json.loads(out.decode("utf-8", "replace"))
        except ValueError:
            return None, "iperf3 client: bad JSON (rc=%d) %s" % (cl.returncode, err.decode("utf-8", "replace")[-300:])
        if d.get("error"):
            return None, "iperf3: " + d["error"]
        end = d.get("end", {})
        sent = end.get("sum_sent") or end.get("sum", {})
        recv = end.get("sum_received") or end.get("sum", {})
        sent_pkts = int(sent.get("packets", 0))
        recv_pkts = max(0, int(recv.get("packets", 0)) - int(recv.get("lost_packets", 0)))
        secs = float(recv.get("seconds", 0.0)) or float(seconds)
        return {
            "sent_packets": sent_pkts,
            "recv_packets": recv_pkts,
            "sent_pps": sent_pkts / (float(sent.get("seconds", 0.0)) or float(seconds)),
            "recv_pps": recv_pkts / secs,
            "loss": max(0.0, 100.0 * (1.0 - recv_pkts / sent_pkts)) if sent_pkts else 100.0,
            "proxy_cpu_s": (cpu1 - cpu0) / CLK_TCK if proxy else None,
            "ksoftirqd_cpu_s": (k1 - k0) / CLK_TCK,
            "wall": wall,
        }, None
    finally:
        try:
            srv.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        stop(srv, grace=1.0)


def measure_row(row, load, rate, workdir, agent, seconds):
    proxy = None
    try:
        if row != "direct":
            proxy, _ = start_proxy(row, workdir, agent)
        target = ADDR["sv"] if row == "direct" else ADDR["mc"]
        c0 = children_cpu_s()
        res, err = iperf(workdir, target, seconds, rate, proxy)
        if err:
            return None, err
        # iperf3 client and server are reaped children of ours by now (ip netns exec execs them)
        res["iperf_cpu_s"] = children_cpu_s() - c0
        res["total_cpu_s"] = res["iperf_cpu_s"] + (res["proxy_cpu_s"] or 0.0) + res["ksoftirqd_cpu_s"]
        if row == "agent (eBPF offload)":
            time.sleep(0.35)  # the poller adds the kernel's counters every 100 ms
            tot, states = offload_counters()
            res["offload"] = {"traffic_up": tot[0], "traffic_down": tot[1], "kernel_up": tot[2],
                              "kernel_down": tot[3], "states": states}
        if proxy is not None and proxy.poll() is not None:
            return None, "the proxy exited during the run (rc=%s)" % proxy.returncode
        return res, None
    finally:
        if proxy is not None:
            stop(proxy)


# --------------------------------------------------------------------------
# TCP: bulk (iperf3) and small-message round trips, with and without the sockmap splice
# --------------------------------------------------------------------------

ECHO_SERVER = r"""
import socket, sys, threading
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(64)
def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
    c.close()
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

RTT_CLIENT = r"""
import socket, sys, time
host, port, size, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
c = socket.create_connection((host, port), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"x" * size
n = 0
t0 = time.monotonic()
end = t0 + seconds
while time.monotonic() < end:
    c.sendall(msg)
    got = 0
    while got < size:
        b = c.recv(size - got)
        if not b:
            raise SystemExit("connection closed after %d round trips" % n)
        got += len(b)
    n += 1
print(n, time.monotonic() - t0)
"""


def metrics_text():
    def call():
        c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=5)
        try:
            c.request("GET", "/metrics")
            return c.getresponse().read().decode("utf-8", "replace")
        finally:
            c.close()
    return in_ns("mid", call)


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


def tcp_bulk(workdir, target, seconds):
    """One iperf3 TCP stream from the client ns; returns (Gbit/s received, bytes received) or raises RuntimeError."""
    srv_log = os.path.join(workdir, "iperf3-tcp-server.log")
    srv = spawn(nsexec("sv") + ["iperf3", "-s", "-1", "-B", ADDR["sv"], "-p", str(IPERF_PORT)], srv_log)
    try:
        if not wait_listening(srv, [(IPERF_PORT, False)], timeout=5):
            raise RuntimeError("iperf3 server did not start: " + tail(srv_log))
        port = IPERF_PORT if target == ADDR["sv"] else PROXY_PORT
        cmd = nsexec("cl") + ["iperf3", "-c", target, "-p", str(port), "-t", str(seconds), "-J",
                              "--connect-timeout", "3000"]
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 15)
        d = json.loads(out.stdout.decode("utf-8", "replace") or "{}")
        if d.get("error") or "end" not in d:
            raise RuntimeError("iperf3 TCP: %s %s" % (d.get("error"), out.stderr.decode("utf-8", "replace")[-300:]))
        recv = d["end"].get("sum_received", {})
        return float(recv.get("bits_per_second", 0.0)) / 1e9, int(recv.get("bytes", 0))
    finally:
        try:
            srv.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        stop(srv, grace=1.0)


def tcp_round_trips(target, seconds):
    """64-byte request/answer round trips on one connection for `seconds`; returns round trips per second."""
    port = ECHO_PORT if target == ADDR["sv"] else RTT_PORT
    cmd = nsexec("cl") + [sys.executable, "-c", RTT_CLIENT, target, str(port), str(RTT_LEN), str(seconds)]
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=seconds + 15)
    if out.returncode != 0:
        raise RuntimeError("round-trip client: " + out.stderr.decode("utf-8", "replace")[-300:])
    n, wall = out.stdout.decode().split()
    return int(n) / float(wall), int(n)


def measure_tcp_row(row, load, workdir, agent, seconds):
    """One (row, TCP load): {"rate", "unit_count", "proxy_cpu_s", "kernel_share"}."""
    proxy = None
    try:
        if row != "direct":
            proxy, _ = start_proxy(row, workdir, agent)
        target = ADDR["sv"] if row == "direct" else ADDR["mc"]
        # The sockmap splice hands redirected data over in kernel work queues (kworker threads) and softirq: count
        # them with the proxy, else its CPU would look lower than what the path costs.
        kthreads = ("ksoftirqd/", "kworker/")
        cpu0 = tree_cpu_ticks(proxy.pid) if proxy else 0
        k0 = ksoftirqd_ticks(kthreads)
        if load == "bulk":
            rate, count = tcp_bulk(workdir, target, seconds)
        else:
            rate, count = tcp_round_trips(target, seconds)
        cpu1 = tree_cpu_ticks(proxy.pid) if proxy else 0
        k1 = ksoftirqd_ticks(kthreads)
        res = {"rate": rate, "count": count, "proxy_cpu_s": (cpu1 - cpu0) / CLK_TCK if proxy else None,
               "kthreads_cpu_s": (k1 - k0) / CLK_TCK}
        if row == "agent (eBPF offload)":
            time.sleep(0.35)  # the poller adds the kernel's counters every 100 ms
            text = metrics_text()
            kernel = metric(text, 'l7mp_offload_bytes_total{direction="rx"}') or 0.0
            listener = "tcp-in" if load == "bulk" else "rtt-in"
            total = metric(text, 'l7mp_listener_bytes_total{direction="rx",listener="%s"}' % listener) or 0.0
            res["kernel_share"] = (kernel, total)
        if proxy is not None and proxy.poll() is not None:
            raise RuntimeError("the proxy exited during the run (rc=%s)" % proxy.returncode)
        return res
    finally:
        if proxy is not None:
            stop(proxy)


def tcp_table(results, notes, seconds):
    lines = [
        "| load | path | rate | vs direct | vs agent (user space) | proxy CPU | kworker + ksoftirqd CPU | kernel carried |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for load in TCP_LOADS:
        base = results.get(("direct", load))
        user = results.get(("agent (user space)", load))
        for row in ROWS:
            label = "agent (sockmap splice)" if row == "agent (eBPF offload)" else row
            r = results.get((row, load))
            if r is None:
                lines.append("| %s | %s | %s |  |  |  |  |  |" % (load, label, notes.get((row, load), "n/a")))
                continue

            def ratio(b):
                return "%.2f×" % (r["rate"] / b["rate"]) if b and b["rate"] else "–"

            if load == "bulk":
                rate = "%.2f Gbit/s" % r["rate"]
                per, unit = r["count"] / 1e9, "s/GB"
            else:
                rate = "%.0f /s" % r["rate"]
                per, unit = r["count"] / 1e5, "s/100k"
            cpu = "–" if r["proxy_cpu_s"] is None or not per else "%.2f %s" % (r["proxy_cpu_s"] / per, unit)
            kcpu = "%.2f %s" % (r["kthreads_cpu_s"] / per, unit) if per else "–"
            kern = ""
            if "kernel_share" in r:
                kb, tb = r["kernel_share"]
                kern = "%.1f of %.1f MB up (%.1f %%)" % (kb / 1e6, tb / 1e6, 100.0 * kb / tb if tb else 0.0)
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (load, label, rate, ratio(base), ratio(user), cpu,
                                                                        kcpu, kern))
    head = ("TCP, %g s per row, same topology: `bulk` is one iperf3 TCP stream (received rate, proxy CPU per GB); "
            "`round trips` is one connection doing 64-byte request/answer exchanges back to back (Python client, "
            "TCP_NODELAY; proxy CPU per 100k round trips). The kworker + ksoftirqd column is every kernel worker thread of "
            "the machine (noisy: it includes unrelated work), where the splice's hand-over runs.\n\n" % seconds)
    return head + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------

def fmt_k(v):
    return "%.1f k" % (v / 1000.0)


def table(results, notes, seconds):
    lines = [
        "| load | path | sent pps | received pps | loss | vs direct | vs agent (user space) "
        "| proxy CPU s / Mpkt | iperf3 CPU s / Mpkt | total CPU s / Mpkt | kernel carried (up / down) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for load, _rate in LOADS:
        base = results.get(("direct", load))
        user = results.get(("agent (user space)", load))
        for row in ROWS:
            r = results.get((row, load))
            if r is None:
                lines.append("| %s | %s | %s |  |  |  |  |  |  |  |  |" % (load, row, notes.get((row, load), "n/a")))
                continue
            mp = r["recv_packets"] / 1e6 if r["recv_packets"] else None

            def ratio(b):
                return "%.2f×" % (r["recv_pps"] / b["recv_pps"]) if b and b["recv_pps"] else "–"

            pcpu = "–" if r["proxy_cpu_s"] is None or not mp else "%.2f" % (r["proxy_cpu_s"] / mp)
            icpu = "%.2f" % (r["iperf_cpu_s"] / mp) if mp else "–"
            tcpu = "%.2f" % (r["total_cpu_s"] / mp) if mp else "–"
            kern = ""
            if "offload" in r:
                o = r["offload"]
                kern = "%d / %d of %d / %d datagrams (%.1f %% up)" % (
                    o["kernel_up"], o["kernel_down"], o["traffic_up"], o["traffic_down"],
                    100.0 * o["kernel_up"] / o["traffic_up"] if o["traffic_up"] else 0.0)
            lines.append("| %s | %s | %s | %s | %.1f %% | %s | %s | %s | %s | %s | %s |" % (
                load, row, fmt_k(r["sent_pps"]), fmt_k(r["recv_pps"]), r["loss"], ratio(base), ratio(user),
                pcpu, icpu, tcpu, kern))
    head = ("64-byte UDP payloads (iperf3 -u -l 64), %g s per row, client ns -> middle ns -> server ns over veth, "
            "one proxy worker; CPU per million packets received at the server.\n\n" % seconds)
    return head + "\n".join(lines) + "\n"


def main():
    default_agent = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.expanduser("~/.cache/l7mp/target"),
                                 "release", "l7mp-agent")
    ap = argparse.ArgumentParser(description="eBPF UDP offload vs kernel forwarding, user-space agent and nginx")
    ap.add_argument("--agent", default=os.environ.get("L7MP_AGENT") or default_agent)
    ap.add_argument("--seconds", type=float, default=None, help="seconds per measurement (default 5, smoke 1)")
    ap.add_argument("--smoke", action="store_true", help="CI mode: 1 s per measurement")
    ap.add_argument("--out", help="write the markdown table here")
    args = ap.parse_args()
    seconds = args.seconds if args.seconds is not None else (1 if args.smoke else 5)
    seconds = int(max(1, min(60, seconds)))
    if os.geteuid() != 0:
        log("offload_bench.py: needs root (network namespaces, BPF)")
        return 2
    for tool in ("ip", "iperf3"):
        if not shutil.which(tool):
            log("offload_bench.py: %s is not installed" % tool)
            return 2
    if not os.access(args.agent, os.X_OK):
        log("offload_bench.py: agent binary %s not found (build it, or pass --agent)" % args.agent)
        return 2

    atexit.register(cleanup)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    workdir = tempfile.mkdtemp(prefix="l7mp-offload-bench-")
    _TMP.append(workdir)
    t_start = time.time()
    results, notes, failed = {}, {}, []
    try:
        try:
            setup_network()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            log("offload_bench.py: cannot set up the namespaces: %s" % e)
            return 2
        echo = spawn(nsexec("sv") + [sys.executable, "-c", ECHO_SERVER, ADDR["sv"], str(ECHO_PORT)],
                     os.path.join(workdir, "echo.log"))
        if not wait_listening(echo, [(ECHO_PORT, False)], timeout=5):
            log("offload_bench.py: the echo server did not start: " + tail(os.path.join(workdir, "echo.log")))
            return 2
        n, total = 0, len(ROWS) * (len(LOADS) + len(TCP_LOADS))
        skipped_rows = {}
        for load, rate in LOADS:
            for row in ROWS:
                n += 1
                if row in skipped_rows:
                    notes[(row, load)] = "skipped: " + skipped_rows[row]
                    continue
                try:
                    res, err = measure_row(row, load, rate, workdir, args.agent, seconds)
                except Skip as e:
                    skipped_rows[row] = str(e)
                    notes[(row, load)] = "skipped: %s" % e
                    log("[%d/%d] %s, %s: SKIP %s" % (n, total, load, row, e))
                    continue
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    res, err = None, str(e)
                if err:
                    notes[(row, load)] = "failed"
                    failed.append("%s, %s: %s" % (row, load, err))
                    log("[%d/%d] %s, %s: FAILED %s" % (n, total, load, row, err))
                    continue
                results[(row, load)] = res
                extra = ""
                if "offload" in res:
                    o = res["offload"]
                    extra = ", kernel carried %d/%d up, %d/%d down" % (
                        o["kernel_up"], o["traffic_up"], o["kernel_down"], o["traffic_down"])
                    if o["kernel_up"] == 0:
                        failed.append("%s, %s: the kernel carried nothing (states %s)" % (row, load, o["states"]))
                log("[%d/%d] %s, %s: %.1f kpps received of %.1f kpps sent%s%s" % (
                    n, total, load, row, res["recv_pps"] / 1e3, res["sent_pps"] / 1e3,
                    "" if res["proxy_cpu_s"] is None else ", proxy CPU %.2f s" % res["proxy_cpu_s"], extra))
                if res["recv_packets"] == 0:
                    failed.append("%s, %s: nothing delivered" % (row, load))
        tcp_results, tcp_notes = {}, {}
        for load in TCP_LOADS:
            for row in ROWS:
                n += 1
                if row in skipped_rows:
                    tcp_notes[(row, load)] = "skipped: " + skipped_rows[row]
                    continue
                try:
                    res = measure_tcp_row(row, load, workdir, args.agent, seconds)
                except Skip as e:
                    skipped_rows[row] = str(e)
                    tcp_notes[(row, load)] = "skipped: %s" % e
                    log("[%d/%d] TCP %s, %s: SKIP %s" % (n, total, load, row, e))
                    continue
                except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
                    tcp_notes[(row, load)] = "failed"
                    failed.append("TCP %s, %s: %s" % (row, load, e))
                    log("[%d/%d] TCP %s, %s: FAILED %s" % (n, total, load, row, e))
                    continue
                tcp_results[(row, load)] = res
                extra = ""
                if "kernel_share" in res:
                    kb, tb = res["kernel_share"]
                    extra = ", kernel carried %.1f of %.1f MB" % (kb / 1e6, tb / 1e6)
                    if kb == 0:
                        failed.append("TCP %s, %s: the kernel carried nothing" % (row, load))
                log("[%d/%d] TCP %s, %s: %s%s%s" % (
                    n, total, load, row,
                    ("%.2f Gbit/s" % res["rate"]) if load == "bulk" else ("%.0f round trips/s" % res["rate"]),
                    "" if res["proxy_cpu_s"] is None else ", proxy CPU %.2f s" % res["proxy_cpu_s"], extra))
                if res["count"] == 0:
                    failed.append("TCP %s, %s: nothing delivered" % (row, load))
    finally:
        cleanup()
    md = table(results, notes, seconds) + "\n" + tcp_table(tcp_results, tcp_notes, seconds)
    print(md)
    if args.out:
        with open(args.out, "w") as f:
            f.write(md)
    log("offload_bench.py: %.1f s" % (time.time() - t_start))
    if failed:
        log("FAILED:\n  " + "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
