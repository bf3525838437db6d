#!/usr/bin/env python3
"""Cost of TLS termination: throughput and handshake rate of a TLS listener -> TCP cluster through the agent, next to
plain TCP -> TCP through the agent, and the same two through nginx (stream module, `ssl` termination), in one run.

Topology, all on 127.0.0.1: a TCP sink (benchlib's one-process epoll discard server, 1 MiB reads) on 15302; the proxies listen on 15301 (plain)
and 15311 (TLS) and forward to the sink. Certificates (a CA and a server certificate for 127.0.0.1/localhost,
ECDSA P-256) are made with the openssl command in a temporary directory. Both proxies run one worker
(`--threads 1`, `worker_processes 1`); both offer TLS 1.3 with the same certificate.

Loads, each bounded by --seconds (default 5; --smoke: 1), one Python client process per run (standard `ssl`):
- `bulk`: one connection writing 256 KiB chunks as fast as it can; reported in MB/s sent (the sink reads everything).
- `handshakes`: new connections back to back, each doing the TLS handshake (or just the TCP connect on the plain
  rows), sending 1 byte and closing; reported in connections/s.
Rows: `direct` (client -> sink, plain; the client's and the sink's own ceiling), `l7mp TCP`, `l7mp TLS`, `nginx TCP`, `nginx TLS`.
Ratios: each TLS row against its proxy's plain row, and l7mp against nginx for the same mode. The client shares the
machine with the proxy, so the absolute numbers are bounded by it; the ratios are what to compare.

Skipped with a note: the nginx rows when nginx or its stream module (with ssl) is missing.
Exit status: 0 when every row that ran moved data; 1 when an l7mp row moved nothing or the agent did not start;
2 when the openssl command is missing.

Usage: python3 e2e/bench/tls_bench.py [--smoke] [--seconds S] [--agent PATH] [--out FILE]
Python standard library only; needs openssl (nginx with libnginx-mod-stream optional).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import accepts, log, start, start_sink, stop  # noqa: E402
from bench import find_nginx_stream_module  # noqa: E402

HOST = "127.0.0.1"
PLAIN, TLS, SINK = 15301, 15311, 15302

CLIENT = r"""
import socket, ssl, sys, time
mode, port, seconds, ca = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ctx = None
if ca:
    ctx = ssl.create_default_context(cafile=ca)
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(s, server_hostname="localhost") if ctx else s
deadline = time.monotonic() + seconds
if mode == "bulk":
    buf = memoryview(b"x" * (256 * 1024))
    s = connect()
    sent, t0 = 0, time.monotonic()
    while time.monotonic() < deadline:
        s.sendall(buf)
        sent += len(buf)
    took = time.monotonic() - t0
    s.close()
    print(sent / took / 1e6)
else:
    n, t0 = 0, time.monotonic()
    while time.monotonic() < deadline:
        s = connect()
        s.sendall(b"x")
        s.close()
        n += 1
    print(n / (time.monotonic() - t0))
"""


def make_certs(d):
    run = lambda *a: subprocess.run(a, cwd=d, check=True, capture_output=True)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=bench CA")
    run("openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")


def agent_config(d):
    cert, key = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
    return textwrap.dedent("""\
        admin: {log_level: warn}
        listeners:
          - name: plain
            spec: {protocol: TCP, port: %d, address: %s}
            rules: [{action: {route: {destination: sink}}}]
          - name: tls
            spec: {protocol: TLS, port: %d, address: %s, tls: {cert: %s, key: %s}}
            rules: [{action: {route: {destination: sink}}}]
        clusters:
          - name: sink
            spec: {protocol: TCP, port: %d}
            endpoints: [{spec: {address: %s}}]
        """) % (PLAIN, HOST, TLS, HOST, cert, key, SINK, HOST)


def nginx_config(d, certs, module):
    cert, key = os.path.join(certs, "server.pem"), os.path.join(certs, "server.key")
    return textwrap.dedent("""\
        load_module %s;
        worker_processes 1;
        daemon off;
        pid %s/nginx.pid;
        error_log %s/error.log warn;
        events { worker_connections 8192; }
        stream {
            server { listen %s:%d; proxy_pass %s:%d; }
            server {
                listen %s:%d ssl;
                ssl_certificate %s;
                ssl_certificate_key %s;
                ssl_protocols TLSv1.3;
                proxy_pass %s:%d;
            }
        }
        """) % (module, d, d, HOST, PLAIN, HOST, SINK, HOST, TLS, cert, key, HOST, SINK)


def measure(mode, port, seconds, ca):
    out = subprocess.run([sys.executable, "-c", CLIENT, mode, str(port), str(seconds), ca or ""],
                         capture_output=True, text=True, timeout=seconds + 30)
    try:
        return float(out.stdout.strip())
    except ValueError:
        log("client (%s, port %d) failed: %s" % (mode, port, out.stderr.strip()[-300:]))
        return 0.0


def main():
    cache = os.environ.get("L7MP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l7mp")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(cache, "target")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", default=os.environ.get("L7MP_AGENT") or os.path.join(target, "release", "l7mp-agent"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--smoke", action="store_true", help="1 s per measurement (CI)")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    if args.smoke:
        args.seconds = 1.0
    for tool in ("openssl",):
        if not shutil.which(tool):
            log("%s is missing (run e2e/bench/setup.sh)" % tool)
            return 2
    if not os.path.isfile(args.agent):
        log("l7mp-agent not found at %s (cargo build --release -p l7mp-agent)" % args.agent)
        return 1
    module = find_nginx_stream_module() if shutil.which("nginx") else None
    results = {}
    notes = []
    with tempfile.TemporaryDirectory(prefix="l7mp-tlsbench-") as d:
        make_certs(d)
        ca = os.path.join(d, "ca.pem")
        sink = start_sink(HOST, SINK, os.path.join(d, "sink.log"))
        try:
            if not accepts(HOST, SINK):
                log("the sink did not start")
                return 1
            results["direct"] = {m: measure(m, SINK, args.seconds, None) for m in ("bulk", "handshakes")}
            peers = [("l7mp", None)]
            if module:
                peers.append(("nginx", module))
            else:
                notes.append("nginx rows skipped: nginx or its stream module is missing")
            for name, mod in peers:
                if name == "l7mp":
                    cfg = os.path.join(d, "agent.yaml")
                    with open(cfg, "w") as f:
                        f.write(agent_config(d))
                    cmd = [args.agent, "-c", cfg, "-l", "warn", "--threads", "1"]
                else:
                    nd = os.path.join(d, "nginx")
                    os.makedirs(nd, exist_ok=True)
                    cfg = os.path.join(nd, "nginx.conf")
                    with open(cfg, "w") as f:
                        f.write(nginx_config(nd, d, mod))
                    cmd = ["nginx", "-p", nd + "/", "-c", cfg, "-e", os.path.join(nd, "error.log")]
                proc = start(cmd, os.path.join(d, name + ".log"))
                try:
                    if not (accepts(HOST, PLAIN) and accepts(HOST, TLS)):
                        log("%s did not start: %s" % (name, open(os.path.join(d, name + ".log")).read()[-500:]))
                        if name == "l7mp":
                            return 1
                        notes.append("nginx rows skipped: nginx did not start (no ssl in its stream module?)")
                        continue
                    for mode_name, port, cafile in (("TCP", PLAIN, None), ("TLS", TLS, ca)):
                        row = "%s %s" % (name, mode_name)
                        results[row] = {m: measure(m, port, args.seconds, cafile) for m in ("bulk", "handshakes")}
                        log("%s: %.0f MB/s, %.0f connections/s" % (row, results[row]["bulk"],
                                                                    results[row]["handshakes"]))
                finally:
                    stop(proc)
        finally:
            stop(sink)

    def ratio(a, b, m):
        if a in results and b in results and results[b][m]:
            return "%.2f" % (results[a][m] / results[b][m])
        return "–"

    lines = ["| path | bulk MB/s | x own plain | x nginx | connections/s | x own plain | x nginx |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row, r in results.items():
        proxy, _, mode = row.partition(" ")
        own = ratio(row, proxy + " TCP", "bulk") if mode == "TLS" else "–"
        own_c = ratio(row, proxy + " TCP", "handshakes") if mode == "TLS" else "–"
        vs = ratio(row, "nginx " + mode, "bulk") if proxy == "l7mp" else "–"
        vs_c = ratio(row, "nginx " + mode, "handshakes") if proxy == "l7mp" else "–"
        conns = "–" if r["handshakes"] is None else "%.0f" % r["handshakes"]
        lines.append("| %s | %.0f | %s | %s | %s | %s | %s |" % (row, r["bulk"], own, vs, conns, own_c, vs_c))
    table = "\n".join(lines + ["", "%.0f s per measurement, one client process, proxies with one worker." % args.seconds]
                      + ["Note: " + n for n in notes])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    bad = [row for row, r in results.items() if row.startswith("l7mp") and (r["bulk"] <= 0 or r["handshakes"] <= 0)]
    if bad:
        log("no traffic through: %s" % ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
