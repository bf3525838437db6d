#!/usr/bin/env python3
"""Side-by-side loopback benchmark: l7mp (Rust agent) vs. direct, socat, haproxy,
nginx (stream module) and the original Node.js l7mp.

Python 3 standard library only.  See README.md next to this file.

Every proxied measurement is paired with a `direct` (no proxy) measurement run
just before it; the per-pair ratio proxied/direct is computed and the median
over --pairs pairs is reported.  Every proxy runs with one worker thread.

Ports: only 127.0.0.1 and 15000-15999:
  15001  proxy listen port (TCP and UDP)
  15201  iperf3 server (TCP control + TCP/UDP data)
  15202  nginx HTTP backend (connection-rate scenario)
"""

import argparse
import atexit
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
PROXY_PORT = 15001
IPERF_PORT = 15201
HTTP_PORT = 15202

CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_PEERS = ["direct", "l7mp", "socat", "haproxy", "nginx", "node-l7mp"]
SCENARIOS = ["tcp-bulk", "udp-50k", "udp-unlimited", "conn-rate"]
SCENARIO_TITLES = {
    "tcp-bulk": "TCP bulk (iperf3)",
    "udp-50k": "UDP 64 B @ 50k pps (iperf3 -b 25.6M)",
    "udp-unlimited": "UDP 64 B unlimited (iperf3 -b 0)",
    "conn-rate": "new TCP connection per request (wrk -c32, Connection: close)",
}
UDP_LEN = 64


def log(msg, end="\n"):
    sys.stderr.write(msg + end)
    sys.stderr.flush()


# --------------------------------------------------------------------------
# process bookkeeping: everything we start is registered and killed at exit
# --------------------------------------------------------------------------

_SPAWNED = []  # Popen objects
_TMPDIRS = []
_CLEANED = False


def _ppid_map():
    """pid -> ppid for all processes (from /proc/<pid>/stat)."""
    m = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                s = f.read().decode("ascii", "replace")
            rest = s[s.rindex(")") + 2:].split()
            m[int(d)] = int(rest[1])
        except (OSError, ValueError, IndexError):
            pass
    return m


def process_tree(roots):
    """All live pids in the trees rooted at `roots` (roots included)."""
    pm = _ppid_map()
    children = {}
    for pid, ppid in pm.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [r for r in roots if r in pm]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read().decode("ascii", "replace")
        state = s[s.rindex(")") + 2:].split()[0]
        return state not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def kill_tree(proc, grace=3.0):
    """Terminate a Popen and all its descendants, by PID."""
    if proc is None:
        return
    # collect the whole tree first (children get reparented once the root dies)
    pids = process_tree([proc.pid])
    # leaves first, so that parents are still there to reap their children
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline:
        proc.poll()
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
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


def spawn(cmd, logpath, cwd=None, env=None):
    logf = open(logpath, "ab")
    try:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                             stdout=logf, stderr=subprocess.STDOUT,
                             start_new_session=True)
    finally:
        logf.close()
    _SPAWNED.append(p)
    return p


def run_client(cmd, timeout):
    """subprocess.run() for load generators, registered so that cleanup() kills
    them too if we are interrupted; raises TimeoutExpired after killing them."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    _SPAWNED.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(p, grace=1.0)
        raise
    finally:
        if p in _SPAWNED and p.poll() is not None:
            _SPAWNED.remove(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def cleanup():
    global _CLEANED
    if _CLEANED:
        return
    _CLEANED = True
    for p in list(_SPAWNED):
        kill_tree(p, grace=1.0)
    for d in _TMPDIRS:
        shutil.rmtree(d, ignore_errors=True)


def _on_signal(signum, _frame):
    log("\nbench.py: signal %d, cleaning up" % signum)
    cleanup()
    sys.exit(128 + signum)


# --------------------------------------------------------------------------
# /proc helpers: ports, CPU, RSS
# --------------------------------------------------------------------------

def _proc_net_ports(kinds, want_listen):
    """Local ports found in /proc/net/<kind> (tcp LISTEN only if want_listen)."""
    ports = set()
    for kind in kinds:
        try:
            with open("/proc/net/" + kind) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) < 4:
                        continue
                    port = int(parts[1].rsplit(":", 1)[1], 16)
                    if want_listen and parts[3] != "0A":
                        continue
                    ports.add(port)
        except OSError:
            pass
    return ports


def tcp_listening(port):
    return port in _proc_net_ports(["tcp", "tcp6"], True)


def udp_bound(port):
    return port in _proc_net_ports(["udp", "udp6"], False)


def port_free(port, udp=True):
    """True if nothing listens on TCP `port` and nothing is bound to UDP `port`."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
    except OSError:
        return False
    finally:
        s.close()
    if tcp_listening(port):
        return False
    if udp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((HOST, port))
        except OSError:
            return False
        finally:
            u.close()
    return True


def wait_ports_free(ports, timeout=20.0):
    deadline = time.time() + timeout
    while True:
        busy = [p for p in ports if not port_free(p)]
        if not busy:
            return True
        if time.time() > deadline:
            log("  warning: ports still busy after %.0fs: %s" % (timeout, busy))
            return False
        time.sleep(0.1)


def tcp_accepts(port, timeout=0.5):
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def tree_cpu_ticks(roots):
    """utime+stime+cutime+cstime summed over the live process tree.

    Reaped children's time is in their parent's cutime/cstime, so the delta of
    this sum over an interval is the CPU the whole tree used (incl. forked
    children that came and went)."""
    total = 0
    for pid in process_tree(roots):
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                s = f.read().decode("ascii", "replace")
            rest = s[s.rindex(")") + 2:].split()
            # fields 14..17 (1-based) = utime stime cutime cstime; rest[0] is field 3
            total += sum(int(x) for x in rest[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return total


def tree_rss_kib(roots):
    total = 0
    for pid in process_tree(roots):
        try:
            with open("/proc/%d/status" % pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass
    return total


class RssSampler(threading.Thread):
    def __init__(self, roots, interval=0.1):
        super().__init__(daemon=True)
        self.roots, self.interval = roots, interval
        self.peak = 0
        self._stop_ev = threading.Event()

    def run(self):
        while not self._stop_ev.is_set():
            self.peak = max(self.peak, tree_rss_kib(self.roots))
            self._stop_ev.wait(self.interval)

    def stop(self):
        self._stop_ev.set()
        self.join(timeout=2)
        self.peak = max(self.peak, tree_rss_kib(self.roots))
        return self.peak


# --------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------

def l7mp_yaml(listen_port, up_port, udp):
    lines = [
        "admin: {log_level: warn}",
        "listeners:",
        "  - name: tcp-in",
        "    spec: {protocol: TCP, port: %d}" % listen_port,
        "    rules: [{action: {route: {destination: tcp-up}}}]",
    ]
    if udp:
        lines += [
            "  - name: udp-in",
            "    spec: {protocol: UDP, port: %d}" % listen_port,
            "    rules: [{action: {route: {destination: udp-up}}}]",
        ]
    lines += [
        "clusters:",
        "  - name: tcp-up",
        "    spec: {protocol: TCP, port: %d}" % up_port,
        "    endpoints: [{spec: {address: %s}}]" % HOST,
    ]
    if udp:
        lines += [
            "  - name: udp-up",
            "    spec: {protocol: UDP, port: %d}" % up_port,
            "    endpoints: [{spec: {address: %s}}]" % HOST,
        ]
    return "\n".join(lines) + "\n"


def find_nginx_stream_module():
    for d in ("/usr/lib/nginx/modules", "/usr/share/nginx/modules",
              "/usr/lib64/nginx/modules", "/etc/nginx/modules"):
        p = os.path.join(d, "ngx_stream_module.so")
        if os.path.isfile(p):
            return p
    for root, _dirs, files in os.walk("/usr/lib/nginx"):
        if "ngx_stream_module.so" in files:
            return os.path.join(root, "ngx_stream_module.so")
    return None


class Peer:
    name = "?"
    tcp_only = False

    def __init__(self, args):
        self.args = args
        self.procs = []

    def available(self):
        return True, ""

    def supports(self, scn):
        return not (self.tcp_only and scn in ("udp-50k", "udp-unlimited"))

    def start(self, workdir, listen_port, up_port, udp):
        raise NotImplementedError

    def roots(self):
        return [p.pid for p in self.procs]

    def exited(self):
        return [p for p in self.procs if p.poll() is not None]

    def stop(self):
        for p in self.procs:
            kill_tree(p)
        self.procs = []

    def logs(self):
        return []


class Direct(Peer):
    name = "direct"


class L7mpAgent(Peer):
    name = "l7mp"

    def binary(self):
        if self.args.agent:
            return self.args.agent
        if os.environ.get("L7MP_AGENT"):
            return os.environ["L7MP_AGENT"]
        tgt = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
            os.path.expanduser("~"), ".cache", "l7mp", "target")
        return os.path.join(tgt, "release", "l7mp-agent")

    def available(self):
        b = self.binary()
        if os.path.isfile(b) and os.access(b, os.X_OK):
            return True, ""
        return False, ("agent binary %s not found (build: cargo build --release -p l7mp-agent, "
                       "or set L7MP_AGENT / --agent)" % b)

    def start(self, workdir, listen_port, up_port, udp):
        cfg = os.path.join(workdir, "l7mp.yaml")
        with open(cfg, "w") as f:
            f.write(l7mp_yaml(listen_port, up_port, udp))
        self._log = os.path.join(workdir, "l7mp.log")
        self.procs = [spawn([self.binary(), "-c", cfg, "-l", "warn", "--threads", "1"], self._log)]

    def logs(self):
        return [self._log]


class Socat(Peer):
    name = "socat"

    def available(self):
        if shutil.which("socat"):
            return True, ""
        return False, "socat not installed (run setup.sh)"

    def start(self, workdir, listen_port, up_port, udp):
        self._logs = [os.path.join(workdir, "socat-tcp.log")]
        self.procs = [spawn(["socat", "TCP4-LISTEN:%d,fork,reuseaddr,bind=%s" % (listen_port, HOST),
                             "TCP4:%s:%d" % (HOST, up_port)], self._logs[0])]
        if udp:
            self._logs.append(os.path.join(workdir, "socat-udp.log"))
            self.procs.append(spawn(["socat", "UDP4-LISTEN:%d,fork,reuseaddr,bind=%s" % (listen_port, HOST),
                                     "UDP4:%s:%d" % (HOST, up_port)], self._logs[1]))

    def logs(self):
        return self._logs


class Haproxy(Peer):
    name = "haproxy"
    tcp_only = True

    def available(self):
        if shutil.which("haproxy"):
            return True, ""
        return False, "haproxy not installed (run setup.sh)"

    def start(self, workdir, listen_port, up_port, udp):
        cfg = os.path.join(workdir, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("""global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 120s
    timeout server 120s
listen tcp-in
    bind %s:%d
    server up %s:%d
""" % (HOST, listen_port, HOST, up_port))
        self._log = os.path.join(workdir, "haproxy.log")
        self.procs = [spawn(["haproxy", "-db", "-f", cfg], self._log)]

    def logs(self):
        return [self._log]


class Nginx(Peer):
    name = "nginx"

    def available(self):
        if not shutil.which("nginx"):
            return False, "nginx not installed (run setup.sh)"
        if not find_nginx_stream_module():
            return False, "nginx stream module (ngx_stream_module.so) not found (apt-get install libnginx-mod-stream)"
        return True, ""

    def start(self, workdir, listen_port, up_port, udp):
        d = os.path.join(workdir, "nginx-proxy")
        os.makedirs(d, exist_ok=True)
        udp_srv = ""
        if udp:
            udp_srv = ("    server { listen %s:%d udp; proxy_pass %s:%d; proxy_timeout 60s; }\n"
                       % (HOST, listen_port, HOST, up_port))
        conf = """load_module %s;
worker_processes 1;
daemon off;
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 8192; }
stream {
    server { listen %s:%d; proxy_pass %s:%d; }
%s}
""" % (find_nginx_stream_module(), d, d, HOST, listen_port, HOST, up_port, udp_srv)
        cfg = os.path.join(d, "nginx.conf")
        with open(cfg, "w") as f:
            f.write(conf)
        self._logs = [os.path.join(d, "stderr.log"), os.path.join(d, "error.log")]
        self.procs = [spawn(["nginx", "-p", d + "/", "-c", cfg, "-e", os.path.join(d, "error.log")],
                            self._logs[0])]

    def logs(self):
        return self._logs


class NodeL7mp(Peer):
    name = "node-l7mp"

    def pkgdir(self):
        if self.args.node_l7mp:
            return self.args.node_l7mp
        cache = os.environ.get("L7MP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l7mp")
        return os.path.join(cache, "node-l7mp", "node_modules", "@l7mp", "l7mp")

    def available(self):
        if not shutil.which("node"):
            return False, "node not installed"
        if not os.path.isfile(os.path.join(self.pkgdir(), "l7mp-proxy.js")):
            return False, "original l7mp not found in %s (run setup.sh)" % self.pkgdir()
        return True, ""

    def start(self, workdir, listen_port, up_port, udp):
        cfg = os.path.join(workdir, "node-l7mp.yaml")
        with open(cfg, "w") as f:
            f.write(l7mp_yaml(listen_port, up_port, udp))
        self._log = os.path.join(workdir, "node-l7mp.log")
        self.procs = [spawn(["node", "l7mp-proxy.js", "-c", cfg], self._log, cwd=self.pkgdir())]

    def logs(self):
        return [self._log]


PEER_CLASSES = {c.name: c for c in (Direct, L7mpAgent, Socat, Haproxy, Nginx, NodeL7mp)}


# --------------------------------------------------------------------------
# backends and clients
# --------------------------------------------------------------------------

class Sink:
    """A throwaway TCP acceptor on the upstream port, so that readiness probes
    through a proxy reach something (and never an iperf3 server)."""

    def __init__(self, port):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind((HOST, port))
        self.s.listen(64)
        self.s.settimeout(0.1)
        self._stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop:
            try:
                c, _ = self.s.accept()
                c.close()
            except OSError:
                pass

    def close(self):
        self._stop = True
        self.t.join(timeout=2)
        self.s.close()


def start_http_backend(workdir):
    d = os.path.join(workdir, "nginx-backend")
    os.makedirs(d, exist_ok=True)
    conf = """worker_processes 1;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    server {
        listen %(host)s:%(port)d backlog=4096;
        location / {
            default_type text/plain;
            return 200 "hello from the l7mp bench backend\\n";
        }
    }
}
""" % {"d": d, "host": HOST, "port": HTTP_PORT}
    cfg = os.path.join(d, "nginx.conf")
    with open(cfg, "w") as f:
        f.write(conf)
    p = spawn(["nginx", "-p", d + "/", "-c", cfg, "-e", os.path.join(d, "error.log")],
              os.path.join(d, "stderr.log"))
    deadline = time.time() + 10
    while time.time() < deadline:
        if p.poll() is not None:
            break
        if tcp_accepts(HTTP_PORT):
            return p
        time.sleep(0.05)
    kill_tree(p)
    raise RuntimeError("nginx HTTP backend did not start: %s" % tail(os.path.join(d, "error.log")))


def tail(path, n=8):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return " | ".join(lines[-n:])
    except OSError:
        return ""


def log_excerpt(path):
    """The interesting lines of a proxy log: error-looking lines near the end, else the tail."""
    try:
        with open(path, "rb") as f:
            lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    last = lines[-30:]
    hits = [l for l in last if re.search(r"error|panic|fatal|alert|uncaught|exception", l, re.I)]
    pick = hits[:3] if hits else last[-4:]
    return " | ".join(pick)


def run_iperf(workdir, target_port, duration, udp=False, rate=None, sampler=None):
    """One iperf3 measurement against a fresh one-off iperf3 server.

    Returns (result dict, error string or None)."""
    wait_ports_free([IPERF_PORT])
    srv_log = os.path.join(workdir, "iperf3-server.log")
    srv = spawn(["iperf3", "-s", "-1", "-B", HOST, "-p", str(IPERF_PORT)], srv_log)
    try:
        deadline = time.time() + 5
        while not tcp_listening(IPERF_PORT):
            if srv.poll() is not None or time.time() > deadline:
                return None, "iperf3 server did not start: " + tail(srv_log)
            time.sleep(0.02)
        cmd = ["iperf3", "-c", HOST, "-p", str(target_port), "-t", str(duration), "-J",
               "--connect-timeout", "3000"]
        if udp:
            cmd += ["-u", "-l", str(UDP_LEN), "-b", rate]
        if sampler:
            sampler.begin()
        t0 = time.time()
        try:
            cp = run_client(cmd, timeout=duration + 8)
        except subprocess.TimeoutExpired:
            return None, "iperf3 client timed out"
        finally:
            wall = time.time() - t0
            if sampler:
                sampler.end(wall)
        try:
            d = json.loads(cp.stdout.decode("utf-8", "replace"))
        except ValueError:
            return None, "iperf3 client: bad JSON (rc=%d) %s" % (cp.returncode, cp.stderr[-300:])
        if d.get("error"):
            return None, "iperf3: " + d["error"]
        end = d.get("end", {})
        if not udp:
            r = end.get("sum_received", {})
            return {"bits_per_second": float(r.get("bits_per_second", 0.0)),
                    "seconds": float(r.get("seconds", 0.0)), "wall": wall}, None
        sent = end.get("sum_sent") or end.get("sum", {})
        recv = end.get("sum_received") or end.get("sum", {})
        sent_pkts = int(sent.get("packets", 0))
        recv_pkts = max(0, int(recv.get("packets", 0)) - int(recv.get("lost_packets", 0)))
        secs = float(recv.get("seconds", 0.0)) or float(duration)
        loss = 100.0 * (1.0 - recv_pkts / sent_pkts) if sent_pkts else 100.0
        return {"sent_packets": sent_pkts, "recv_packets": recv_pkts, "seconds": secs,
                "recv_pps": recv_pkts / secs if secs else 0.0,
                "loss_percent": max(0.0, loss),
                "iperf_lost_percent": float(recv.get("lost_percent", 0.0)),
                "wall": wall}, None
    finally:
        try:
            srv.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        kill_tree(srv, grace=1.0)


WRK_RE_RPS = re.compile(r"Requests/sec:\s*([0-9.]+)")
WRK_RE_REQ = re.compile(r"(\d+) requests in ([0-9.]+)(m?s|m)")
WRK_RE_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_RE_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def run_wrk(target_port, duration, sampler=None):
    cmd = ["wrk", "-t1", "-c32", "-d%ds" % duration, "--timeout", "2s",
           "-H", "Connection: close", "http://%s:%d/" % (HOST, target_port)]
    if sampler:
        sampler.begin()
    t0 = time.time()
    try:
        cp = run_client(cmd, timeout=duration + 8)
    except subprocess.TimeoutExpired:
        return None, "wrk timed out"
    finally:
        wall = time.time() - t0
        if sampler:
            sampler.end(wall)
    out = cp.stdout.decode("utf-8", "replace")
    m = WRK_RE_RPS.search(out)
    if cp.returncode != 0 or not m:
        return None, "wrk failed (rc=%d): %s" % (cp.returncode, (out + cp.stderr.decode())[-300:])
    errs = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    e = WRK_RE_ERR.search(out)
    if e:
        errs = dict(zip(("connect", "read", "write", "timeout"), (int(x) for x in e.groups())))
    n = WRK_RE_NON2XX.search(out)
    mreq = WRK_RE_REQ.search(out)
    return {"requests_per_second": float(m.group(1)),
            "requests": int(mreq.group(1)) if mreq else None,
            "socket_errors": sum(errs.values()), "socket_error_detail": errs,
            "non_2xx": int(n.group(1)) if n else 0, "wall": wall}, None


class ProcSampler:
    """CPU (tree utime+stime delta) and peak RSS of a proxy during one run."""

    def __init__(self, roots):
        self.roots = roots
        self.rss = None

    def begin(self):
        self.t0 = time.time()
        self.c0 = tree_cpu_ticks(self.roots)
        self.rss = RssSampler(self.roots)
        self.rss.start()

    def end(self, _wall):
        self.c1 = tree_cpu_ticks(self.roots)
        self.t1 = time.time()
        self.peak_kib = self.rss.stop()

    def cpu_percent(self):
        dt = self.t1 - self.t0
        return 100.0 * (self.c1 - self.c0) / CLK_TCK / dt if dt > 0 else 0.0


# --------------------------------------------------------------------------
# scenario logic
# --------------------------------------------------------------------------

def scenario_value(scn, res):
    """The headline number of a run (higher is better except udp-50k loss)."""
    if res is None:
        return None
    if scn == "tcp-bulk":
        return res["bits_per_second"]
    if scn == "udp-50k":
        return res["loss_percent"]
    if scn == "udp-unlimited":
        return res["recv_pps"]
    if scn == "conn-rate":
        return res["requests_per_second"]
    return None


def carried_traffic(scn, res):
    if res is None:
        return False
    if scn == "tcp-bulk":
        return res["bits_per_second"] > 0
    if scn in ("udp-50k", "udp-unlimited"):
        return res["recv_packets"] > 0
    if scn == "conn-rate":
        return (res["requests"] or 0) > 0 and res["requests_per_second"] > 0
    return False


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Bench:
    def __init__(self, args):
        self.args = args
        self.duration = 1 if args.smoke else args.duration
        self.pairs = 1 if args.smoke else args.pairs
        self.settle = 0.2 if args.smoke else 1.0
        self.workdir = tempfile.mkdtemp(prefix="l7mp-bench-")
        _TMPDIRS.append(self.workdir)
        self.peers = []
        self.skipped = {}
        for name in args.peers:
            p = PEER_CLASSES[name](args)
            ok, why = p.available()
            if ok:
                self.peers.append(p)
            else:
                self.skipped[name] = why
                log("SKIP peer %s: %s" % (name, why))
        self.scenarios = []
        self.scn_skipped = {}
        for scn in args.scenarios:
            missing = []
            if scn != "conn-rate" and not shutil.which("iperf3"):
                missing.append("iperf3")
            if scn == "conn-rate":
                if not shutil.which("wrk"):
                    missing.append("wrk")
                if not shutil.which("nginx"):
                    missing.append("nginx (HTTP backend)")
            if missing:
                self.scn_skipped[scn] = "missing " + ", ".join(missing) + " (run setup.sh)"
                log("SKIP scenario %s: %s" % (scn, self.scn_skipped[scn]))
            else:
                self.scenarios.append(scn)
        # results[scn][peer] = {...}
        self.results = {s: {} for s in SCENARIOS}
        self.direct_runs = {s: [] for s in SCENARIOS}
        self.rss_idle = {}    # peer -> [kib]
        self.rss_loaded = {}  # peer -> [kib] (tcp-bulk, udp-unlimited)
        self.agent_failures = []
        proxied = [p for p in self.peers if p.name != "direct"]
        self.total = 0
        for scn in self.scenarios:
            n = [p for p in proxied if p.supports(scn)]
            self.total += 2 * self.pairs * len(n) if n else self.pairs
        self.k = 0

    # one measurement
    def measure(self, scn, target_port, sampler=None):
        if scn == "tcp-bulk":
            return run_iperf(self.workdir, target_port, self.duration, sampler=sampler)
        if scn == "udp-50k":
            return run_iperf(self.workdir, target_port, self.duration, udp=True, rate="25.6M", sampler=sampler)
        if scn == "udp-unlimited":
            return run_iperf(self.workdir, target_port, self.duration, udp=True, rate="0", sampler=sampler)
        if scn == "conn-rate":
            return run_wrk(target_port, self.duration, sampler=sampler)
        raise ValueError(scn)

    def fmt_run(self, scn, res, err, sampler=None):
        if res is None:
            return "FAILED: %s" % err
        if scn == "tcp-bulk":
            s = "%.2f Gbit/s" % (res["bits_per_second"] / 1e9)
        elif scn == "udp-50k":
            s = "loss %.2f%% (%d/%d pkts)" % (res["loss_percent"], res["recv_packets"], res["sent_packets"])
            if sampler:
                s += ", cpu %.0f%%" % sampler.cpu_percent()
        elif scn == "udp-unlimited":
            s = "%.1f kpps delivered, loss %.1f%%" % (res["recv_pps"] / 1e3, res["loss_percent"])
        else:
            s = "%.0f req/s, %d socket errors" % (res["requests_per_second"], res["socket_errors"])
        if sampler and sampler.peak_kib:
            s += ", rss %.1f MiB" % (sampler.peak_kib / 1024.0)
        return s

    def progress(self, scn, peer, pair, who):
        self.k += 1
        log("[%d/%d] %s %s pair %d/%d %s ..." % (self.k, self.total, scn, peer, pair, self.pairs, who), end=" ")

    def run_direct(self, scn, peer_name, pair, upstream):
        time.sleep(self.settle)
        self.progress(scn, peer_name, pair, "direct")
        res, err = self.measure(scn, upstream)
        log(self.fmt_run(scn, res, err))
        rec = {"result": res, "error": err, "value": scenario_value(scn, res)}
        self.direct_runs[scn].append(rec)
        return rec

    def start_peer(self, peer, scn, upstream, udp):
        """Start `peer` and wait until it accepts TCP (and has its UDP port bound)."""
        wait_ports_free([PROXY_PORT])
        sink = None
        if scn != "conn-rate":
            wait_ports_free([upstream])
            sink = Sink(upstream)
        try:
            # a fresh dir (fresh logs) for every start, restarts included
            pdir = tempfile.mkdtemp(dir=self.workdir, prefix="%s-%s-" % (scn, peer.name))
            peer.start(pdir, PROXY_PORT, upstream, udp)
            deadline = time.time() + self.args.start_timeout
            while True:
                dead = peer.exited()
                if dead:
                    return "exited with code %s: %s" % (dead[0].returncode,
                                                        " || ".join(tail(l) for l in peer.logs()))
                if tcp_accepts(PROXY_PORT) and (not udp or udp_bound(PROXY_PORT)):
                    break
                if time.time() > deadline:
                    return "did not accept on %s:%d within %.0fs: %s" % (
                        HOST, PROXY_PORT, self.args.start_timeout,
                        " || ".join(tail(l) for l in peer.logs()))
                time.sleep(0.05)
            time.sleep(0.3)
            dead = peer.exited()
            if dead:
                return "exited right after start (code %s): %s" % (
                    dead[0].returncode, " || ".join(tail(l) for l in peer.logs()))
            return None
        finally:
            if sink:
                sink.close()

    def note_crash(self, peer, scn, entry, when):
        """Record that `peer` died during `scn`; returns None (kept for symmetry)."""
        codes = [p.returncode for p in peer.exited()]
        msg = "%s exited (code %s) %s: %s" % (peer.name, codes[0] if codes else "?", when,
                                              " || ".join(log_excerpt(l) for l in peer.logs()))
        log("  CRASH: " + msg)
        entry.setdefault("crashes", []).append(msg)
        if peer.name == "l7mp":
            self.agent_failures.append("%s: agent crashed %s" % (scn, when))
        peer.stop()
        return None

    def run_scenario(self, scn):
        udp = scn in ("udp-50k", "udp-unlimited")
        upstream = HTTP_PORT if scn == "conn-rate" else IPERF_PORT
        backend = None
        log("== %s: %s" % (scn, SCENARIO_TITLES[scn]))
        try:
            if scn == "conn-rate":
                wait_ports_free([HTTP_PORT])
                backend = start_http_backend(self.workdir)
            proxied = [p for p in self.peers if p.name != "direct"]
            if not any(p.supports(scn) for p in proxied):
                for i in range(1, self.pairs + 1):
                    self.run_direct(scn, "direct", i, upstream)
            for peer in proxied:
                if not peer.supports(scn):
                    self.results[scn][peer.name] = {"status": "n/a"}
                    continue
                entry = {"status": "ok", "pairs": []}
                self.results[scn][peer.name] = entry
                try:
                    err = self.start_peer(peer, scn, upstream, udp)
                    if err:
                        log("  %s failed to start for %s: %s" % (peer.name, scn, err))
                        entry["status"] = "start-failed"
                        entry["error"] = err
                        self.k += 2 * self.pairs
                        if peer.name == "l7mp":
                            self.agent_failures.append("%s: failed to start: %s" % (scn, err))
                        continue
                    idle = tree_rss_kib(peer.roots())
                    self.rss_idle.setdefault(peer.name, []).append(idle)
                    entry["rss_idle_kib"] = idle
                    for i in range(1, self.pairs + 1):
                        d = self.run_direct(scn, peer.name, i, upstream)
                        time.sleep(self.settle)
                        if peer.exited():
                            # crashed after the previous run: note it, restart, go on
                            err = self.note_crash(peer, scn, entry, "before pair %d" % i)
                            if err is None:
                                err = self.start_peer(peer, scn, upstream, udp)
                            if err:
                                log("  %s could not be restarted for %s: %s" % (peer.name, scn, err))
                                self.k += 1 + 2 * (self.pairs - i)
                                entry["pairs"].append({"direct": d, "proxied": {
                                    "result": None, "error": "restart failed: " + err, "value": None}})
                                if peer.name == "l7mp":
                                    self.agent_failures.append("%s: restart failed: %s" % (scn, err))
                                break
                        self.progress(scn, peer.name, i, peer.name)
                        sampler = ProcSampler(peer.roots())
                        res, err = self.measure(scn, PROXY_PORT, sampler=sampler)
                        if res is None and peer.exited():
                            err = (err or "") + " (proxy exited: %s)" % " || ".join(tail(l) for l in peer.logs())
                        log(self.fmt_run(scn, res, err, sampler))
                        v = scenario_value(scn, res)
                        rec = {"result": res, "error": err, "value": v,
                               "cpu_percent": sampler.cpu_percent() if res is not None else None,
                               "rss_peak_kib": sampler.peak_kib}
                        if scn != "udp-50k" and v is not None and d["value"]:
                            rec["ratio"] = v / d["value"]
                        entry["pairs"].append({"direct": d, "proxied": rec})
                        if scn in ("tcp-bulk", "udp-unlimited") and res is not None:
                            self.rss_loaded.setdefault(peer.name, []).append(sampler.peak_kib)
                    if peer.exited():
                        self.note_crash(peer, scn, entry, "after the last pair")
                    if peer.name == "l7mp":
                        if not any(carried_traffic(scn, p["proxied"]["result"]) for p in entry["pairs"]):
                            self.agent_failures.append("%s: carried no traffic (%s)" % (
                                scn, "; ".join(str(p["proxied"].get("error")) for p in entry["pairs"])))
                finally:
                    peer.stop()
        finally:
            if backend:
                kill_tree(backend)

    def run(self):
        for scn in self.scenarios:
            self.run_scenario(scn)

    # ---------------- reporting ----------------

    def summary(self):
        out = {}
        for scn in SCENARIOS:
            s = {}
            dvals = [r["value"] for r in self.direct_runs[scn]]
            s["direct"] = {"value": median(dvals), "runs": len(dvals)}
            if scn == "udp-50k":
                s["direct"]["loss_percent"] = median(dvals)
            for name, e in self.results[scn].items():
                if e.get("status") != "ok":
                    s[name] = {"status": e.get("status"), "error": e.get("error")}
                    continue
                pv = [p["proxied"].get("value") for p in e["pairs"]]
                ratios = [p["proxied"].get("ratio") for p in e["pairs"]]
                cpus = [p["proxied"].get("cpu_percent") for p in e["pairs"]]
                errs = [p["proxied"]["error"] for p in e["pairs"] if p["proxied"].get("error")]
                rec = {"status": "ok" if any(v is not None for v in pv) else "failed",
                       "value": median(pv), "ratio": median(ratios),
                       "cpu_percent": median(cpus), "errors": errs,
                       "crashes": e.get("crashes", [])}
                if scn == "conn-rate":
                    se = [p["proxied"]["result"]["socket_errors"] for p in e["pairs"] if p["proxied"]["result"]]
                    rec["socket_errors"] = median(se)
                    rec["non_2xx"] = median([p["proxied"]["result"]["non_2xx"]
                                             for p in e["pairs"] if p["proxied"]["result"]])
                s[name] = rec
            if scn == "conn-rate":
                se = [r["result"]["socket_errors"] for r in self.direct_runs[scn] if r["result"]]
                s["direct"]["socket_errors"] = median(se)
            out[scn] = s
        return out

    def markdown(self, summ):
        def num(v, fmt):
            return fmt % v if v is not None else "–"

        def cell(scn, name, fmt, scale, ratio=True):
            if scn not in self.scenarios:
                return ["skip"] + (["–"] if ratio else [])
            if name == "direct":
                d = summ[scn]["direct"]
                v = d["value"]
                return [num(v / scale if v is not None else None, fmt)] + (["1.00"] if ratio and v is not None else (["–"] if ratio else []))
            e = summ[scn].get(name)
            if e is None:
                return ["–"] + (["–"] if ratio else [])
            if e.get("status") == "n/a":
                return ["n/a"] + (["n/a"] if ratio else [])
            if e.get("status") in ("start-failed", "failed"):
                return ["FAIL"] + (["–"] if ratio else [])
            v = e["value"]
            r = [num(v / scale if v is not None else None, fmt) + ("*" if e.get("crashes") else "")]
            if ratio:
                r.append(num(e["ratio"], "%.2f"))
            return r

        hdr = ["peer", "TCP bulk Gbit/s", "× direct",
               "UDP 50k pps loss %", "UDP 50k pps CPU %",
               "UDP unlim. kpps", "× direct",
               "conn/req req/s", "× direct", "sock errs",
               "RSS idle MiB", "RSS loaded MiB"]
        rows = []
        names = [p.name for p in self.peers]
        if "direct" not in names:
            names = ["direct"] + names
        for name in names:
            row = [name]
            row += cell("tcp-bulk", name, "%.2f", 1e9)
            # udp-50k: loss% + CPU%
            if "udp-50k" not in self.scenarios:
                row += ["skip", "skip"]
            elif name == "direct":
                row += [num(summ["udp-50k"]["direct"]["value"], "%.2f"), "–"]
            else:
                e = summ["udp-50k"].get(name, {})
                st = e.get("status")
                if st == "n/a":
                    row += ["n/a", "n/a"]
                elif st in ("start-failed", "failed") or not e:
                    row += ["FAIL" if e else "–", "–"]
                else:
                    row += [num(e["value"], "%.2f") + ("*" if e.get("crashes") else ""),
                            num(e["cpu_percent"], "%.0f")]
            row += cell("udp-unlimited", name, "%.1f", 1e3)
            row += cell("conn-rate", name, "%.0f", 1.0)
            if "conn-rate" not in self.scenarios:
                row += ["skip"]
            elif name == "direct":
                row += [num(summ["conn-rate"]["direct"].get("socket_errors"), "%d")]
            else:
                e = summ["conn-rate"].get(name, {})
                row += [num(e.get("socket_errors"), "%d")]
            if name == "direct":
                row += ["–", "–"]
            else:
                idle = median(self.rss_idle.get(name, []))
                loaded = max(self.rss_loaded.get(name, []) or [0]) or None
                row += [num(idle / 1024.0 if idle else None, "%.1f"),
                        num(loaded / 1024.0 if loaded else None, "%.1f")]
            rows.append(row)
        for name, why in self.skipped.items():
            if name not in names:
                rows.append([name] + ["skipped"] + ["–"] * (len(hdr) - 2))
        lines = []
        lines.append("# l7mp side-by-side loopback benchmark")
        lines.append("")
        lines.append("%s; %s; %d CPUs; mode: %s; %d s per measurement; median of %d pair(s) "
                     "(proxied run right after a direct run, ratio per pair)."
                     % (time.strftime("%Y-%m-%d %H:%M:%S"), platform.platform(), os.cpu_count() or 0,
                        "smoke" if self.args.smoke else "full", self.duration, self.pairs))
        lines.append("")
        lines.append("| " + " | ".join(hdr) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for r in rows:
            lines.append("| " + " | ".join(r) + " |")
        lines.append("")
        lines.append("× direct = median over pairs of (proxied / direct run just before it). "
                     "UDP 50k pps: loss measured at the iperf3 receiver, CPU = proxy process tree, "
                     "% of one core. RSS = VmRSS of the proxy process tree (idle after start; "
                     "loaded = peak during TCP bulk and UDP unlimited). n/a = peer does not do UDP; "
                     "FAIL = peer did not start / carried no traffic; * = the peer crashed "
                     "during the scenario (see below); skip = scenario not run.")
        notes = []
        for name, why in self.skipped.items():
            notes.append("- %s skipped: %s" % (name, why))
        for scn, why in self.scn_skipped.items():
            notes.append("- scenario %s skipped: %s" % (scn, why))
        for scn in self.scenarios:
            for name, e in summ[scn].items():
                if name == "direct":
                    continue
                if e.get("status") in ("start-failed", "failed"):
                    notes.append("- %s / %s: %s" % (scn, name, (e.get("error") or "; ".join(e.get("errors") or []))[:400]))
                if e.get("crashes"):
                    notes.append("- %s / %s: CRASHED %d time(s) (restarted for the next pair; '*' in the table): %s"
                                 % (scn, name, len(e["crashes"]), e["crashes"][0][:400]))
                if e.get("errors") and e.get("status") not in ("start-failed", "failed"):
                    notes.append("- %s / %s: %d failed run(s): %s" % (scn, name, len(e["errors"]), e["errors"][0][:300]))
                if scn == "conn-rate" and e.get("non_2xx"):
                    notes.append("- conn-rate / %s: %d non-2xx responses (median)" % (name, e["non_2xx"]))
        if notes:
            lines.append("")
            lines += notes
        return "\n".join(lines) + "\n"


def parse_args(argv):
    ap = argparse.ArgumentParser(description="side-by-side loopback proxy benchmark (see README.md)")
    ap.add_argument("--peers", default=",".join(ALL_PEERS),
                    help="comma-separated subset of: %s (default: all)" % ",".join(ALL_PEERS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated subset of: %s (default: all)" % ",".join(SCENARIOS))
    ap.add_argument("--pairs", type=int, default=3, help="direct+proxied pairs per peer and scenario (default 3)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measurement (default 10)")
    ap.add_argument("--smoke", action="store_true", help="1 s per measurement, 1 pair (CI)")
    ap.add_argument("--agent", help="path of l7mp-agent (default: $L7MP_AGENT or "
                    "${CARGO_TARGET_DIR:-~/.cache/l7mp/target}/release/l7mp-agent)")
    ap.add_argument("--node-l7mp", help="package dir of the original l7mp "
                    "(default: ${L7MP_CACHE:-~/.cache/l7mp}/node-l7mp/node_modules/@l7mp/l7mp)")
    ap.add_argument("--require-l7mp", action="store_true",
                    help="exit non-zero if the l7mp agent binary is missing (default: skip it)")
    ap.add_argument("--start-timeout", type=float, default=15.0, help="seconds to wait for a proxy to accept")
    ap.add_argument("--out", help="also write the markdown table to this file")
    ap.add_argument("--json", help="write raw numbers as JSON to this file")
    args = ap.parse_args(argv)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEER_CLASSES]
    if bad:
        ap.error("unknown peer(s): %s (known: %s)" % (",".join(bad), ",".join(ALL_PEERS)))
    scns = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [s for s in scns if s not in SCENARIOS]
    if bad:
        ap.error("unknown scenario(s): %s (known: %s)" % (",".join(bad), ",".join(SCENARIOS)))
    if args.pairs < 1 or args.duration < 1:
        ap.error("--pairs and --duration must be >= 1")
    args.peers = [p for p in ALL_PEERS if p in peers]
    args.scenarios = [s for s in SCENARIOS if s in scns]
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    t0 = time.time()
    rc = 0
    bench = None
    try:
        bench = Bench(args)
        if "l7mp" in bench.skipped and args.require_l7mp:
            log("ERROR: --require-l7mp given but %s" % bench.skipped["l7mp"])
            return 2
        busy = [p for p in (PROXY_PORT, IPERF_PORT, HTTP_PORT) if not port_free(p)]
        if busy:
            log("waiting for busy port(s) %s ..." % busy)
            if not wait_ports_free(busy, timeout=30):
                log("ERROR: ports %s are in use by something else" % busy)
                return 2
        bench.run()
        summ = bench.summary()
        md = bench.markdown(summ)
        sys.stdout.write(md)
        sys.stdout.flush()
        if args.out:
            with open(args.out, "w") as f:
                f.write(md)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"mode": "smoke" if args.smoke else "full",
                           "duration_s": bench.duration, "pairs": bench.pairs,
                           "peers": [p.name for p in bench.peers], "skipped_peers": bench.skipped,
                           "scenarios": bench.scenarios, "skipped_scenarios": bench.scn_skipped,
                           "summary": summ,
                           "rss_idle_kib": bench.rss_idle, "rss_loaded_kib": bench.rss_loaded,
                           "direct_runs": bench.direct_runs, "runs": bench.results,
                           "agent_failures": bench.agent_failures,
                           "elapsed_s": time.time() - t0}, f, indent=1)
        if bench.agent_failures:
            log("ERROR: l7mp agent failed:\n  " + "\n  ".join(bench.agent_failures))
            rc = 1
        log("bench.py: done in %.0f s" % (time.time() - t0))
    finally:
        cleanup()
    return rc


if __name__ == "__main__":
    sys.exit(main())
