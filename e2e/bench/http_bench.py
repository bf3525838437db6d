#!/usr/bin/env python3
"""HTTP/1.1 request rate through a reverse proxy: the agent (HTTP listener -> HTTP cluster) and nginx
(`proxy_pass` with an upstream keep-alive pool), side by side in one run, plus wrk straight to the backend.

Backend: nginx on 127.0.0.1:15302 answering every request with a short text body (1 worker). Proxies listen on
15301 (l7mp, one worker thread) and 15303 (nginx, 1 worker), both keeping upstream connections alive. The load is
`wrk -t1 -c<conns> -d<duration>` with keep-alive client connections. Runs alternate between the peers, --pairs
rounds; the table gives median requests/s and the median of the per-round ratios l7mp/nginx. Python standard
library only; needs nginx and wrk (e2e/bench/setup.sh installs them).

    cargo build --release -p l7mp-agent
    python3 e2e/bench/http_bench.py [--smoke] [--out FILE]

Exit status 1 if the agent did not start or answered no request or answered with errors; 0 otherwise.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import accepts, log, start, stop  # noqa: E402

HOST = "127.0.0.1"
L7MP_PORT, BACKEND_PORT, NGINX_PORT = 15301, 15302, 15303
BODY = "hello from the l7mp http bench backend\\n"

AGENT_CONFIG = """admin: {log_level: warn}
listeners:
  - name: web
    spec: {protocol: HTTP, port: %d, address: %s}
    rules:
      - action: {route: {destination: backend}}
clusters:
  - name: backend
    spec: {protocol: HTTP, port: %d}
    endpoints: [{spec: {address: %s}}]
""" % (L7MP_PORT, HOST, BACKEND_PORT, HOST)

NGINX_COMMON = """daemon off;
worker_processes 1;
pid %(d)s/%(name)s.pid;
error_log %(d)s/%(name)s-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %(d)s/%(name)s-body;
    proxy_temp_path %(d)s/%(name)s-proxy;
    fastcgi_temp_path %(d)s/%(name)s-fastcgi;
    uwsgi_temp_path %(d)s/%(name)s-uwsgi;
    scgi_temp_path %(d)s/%(name)s-scgi;
    keepalive_requests 1000000;
%(body)s
}
"""

BACKEND = """    server {
        listen %s:%d backlog=4096;
        location / { default_type text/plain; return 200 "%s"; }
    }""" % (HOST, BACKEND_PORT, BODY)

PROXY = """    upstream backend { server %s:%d; keepalive 64; }
    server {
        listen %s:%d backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }""" % (HOST, BACKEND_PORT, HOST, NGINX_PORT)

WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def nginx(d, name, body):
    cfg = os.path.join(d, name + ".conf")
    with open(cfg, "w") as f:
        f.write(NGINX_COMMON % {"d": d, "name": name, "body": body})
    return start(["nginx", "-p", d + "/", "-c", cfg, "-e", os.path.join(d, name + "-error.log")],
                 os.path.join(d, name + ".log"))


def wrk(port, duration, conns):
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % max(1, int(duration)), "--timeout", "2s",
           "http://%s:%d/" % (HOST, port)]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 20)
    m = WRK_RPS.search(cp.stdout)
    if cp.returncode != 0 or not m:
        return None, "wrk failed: " + (cp.stdout + cp.stderr)[-300:]
    errors = sum(int(x) for x in WRK_ERR.search(cp.stdout).groups()) if WRK_ERR.search(cp.stdout) else 0
    n = WRK_NON2XX.search(cp.stdout)
    return {"rps": float(m.group(1)), "errors": errors, "non2xx": int(n.group(1)) if n else 0}, None


def main():
    cache = os.environ.get("L7MP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l7mp")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(cache, "target")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", default=os.environ.get("L7MP_AGENT") or os.path.join(target, "release", "l7mp-agent"))
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    ap.add_argument("--pairs", type=int, default=3, help="rounds over all peers (default 3)")
    ap.add_argument("--conns", type=int, default=32, help="wrk keep-alive connections (default 32)")
    ap.add_argument("--smoke", action="store_true", help="1 s, 1 round (CI)")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.pairs = 1.0, 1
    missing = [t for t in ("nginx", "wrk") if not shutil.which(t)]
    if missing:
        log("missing %s (run e2e/bench/setup.sh)" % ", ".join(missing))
        return 1
    if not os.path.isfile(args.agent):
        log("l7mp-agent not found at %s (cargo build --release -p l7mp-agent)" % args.agent)
        return 1
    peers = ["direct", "l7mp", "nginx"]
    ports = {"direct": BACKEND_PORT, "l7mp": L7MP_PORT, "nginx": NGINX_PORT}
    rates = {p: [] for p in peers}
    bad = {p: 0 for p in peers}
    failed = False
    with tempfile.TemporaryDirectory(prefix="l7mp-httpbench-") as d:
        cfg = os.path.join(d, "agent.yaml")
        with open(cfg, "w") as f:
            f.write(AGENT_CONFIG)
        backend = nginx(d, "backend", BACKEND)
        try:
            if not accepts(HOST, BACKEND_PORT):
                log("the nginx backend did not start")
                return 1
            for r in range(args.pairs):
                for p in peers:
                    if p == "l7mp":
                        proc = start([args.agent, "-c", cfg, "-l", "warn", "--threads", "1"],
                                     os.path.join(d, "l7mp.log"))
                    elif p == "nginx":
                        proc = nginx(d, "proxy", PROXY)
                    else:
                        proc = None
                    try:
                        if not accepts(HOST, ports[p]):
                            log("[%d/%d] %s did not start" % (r + 1, args.pairs, p))
                            failed = failed or p == "l7mp"
                            continue
                        res, err = wrk(ports[p], args.duration, args.conns)
                        if err:
                            log("[%d/%d] %s: %s" % (r + 1, args.pairs, p, err))
                            failed = failed or p == "l7mp"
                            continue
                        bad[p] += res["errors"] + res["non2xx"]
                        rates[p].append(res["rps"])
                        log("[%d/%d] %s: %.0f requests/s (%d socket errors, %d non-2xx)"
                            % (r + 1, args.pairs, p, res["rps"], res["errors"], res["non2xx"]))
                    finally:
                        if proc:
                            stop(proc)
        finally:
            stop(backend)
        if not rates["l7mp"] or bad["l7mp"]:
            log("the agent answered no request or answered with errors; its log:")
            try:
                with open(os.path.join(d, "l7mp.log")) as f:
                    log(f.read()[-2000:])
            except OSError:
                pass
            failed = True
    lines = ["| peer | HTTP/1.1 requests/s (wrk -c%d, keep-alive) | x direct | x nginx | errors |" % args.conns,
             "|---|---:|---:|---:|---:|"]

    def ratio(a, b):
        pairs = [x / y for x, y in zip(rates[a], rates[b]) if y > 0]
        return "%.2f" % statistics.median(pairs) if pairs else "n/a"

    for p in peers:
        med = statistics.median(rates[p]) if rates[p] else 0
        lines.append("| %s | %.0f | %s | %s | %d |" % (
            p, med, ratio(p, "direct") if p != "direct" else "1.00",
            ratio(p, "nginx") if p != "direct" else "–", bad[p]))
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
