#!/usr/bin/env python3
"""How l7mp-control scales: N simulated agents (lightweight delta-ADS clients in one process, the `xds_scale`
example of l7mp-control) connect; one change is applied through the Management API; the time until every agent has
received and ACKed it is measured (p50/p99/max), with the control plane's RSS per connected agent stream and its CPU
time for the change. Then the same with a store of many resources (the change still reaches every agent). Each
store backend runs the same scenarios in the same run: the embedded store and etcd (a local etcd server on loopback,
its data in /dev/shm, started and removed by this script; skipped with a note if etcd is not installed), with how
fast each stored the resources (objects/s applied through the Management API, 500 per request).

    cargo build --release -p l7mp-control --bin l7mp-control --bin l7mpctl --example xds_scale
    python3 e2e/bench/xds_scale.py [--agents 1000] [--resources 10000] [--stores embedded,etcd] [--smoke] [--out FILE]

Targets on a 2-core machine: p99 <= 1 s for 1,000 agents, <= 20 KiB RSS per idle agent stream. Python standard
library only. Exit status 1 if an agent never got the change.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import log, start, stop  # noqa: E402

GRPC, ADMIN = 18100, 18101
ETCD_CLIENT, ETCD_PEER = 18102, 18103
SERVER = f"http://127.0.0.1:{GRPC}"


def target(name, port, selector="app: scale"):
    return f"""apiVersion: l7mp.io/v1
kind: Target
metadata: {{ name: {name} }}
spec:
  selector: {{ matchLabels: {{ {selector} }} }}
  cluster:
    spec: {{ UDP: {{ port: {port} }} }}
    endpoints: [ {{ spec: {{ address: 127.0.0.1 }} }} ]
"""


def vsvc(name, port, dest, selector="app: scale"):
    return f"""apiVersion: l7mp.io/v1
kind: VirtualService
metadata: {{ name: {name} }}
spec:
  selector: {{ matchLabels: {{ {selector} }} }}
  listener:
    spec: {{ UDP: {{ port: {port} }} }}
    rules: [ {{ action: {{ route: {{ destinationRef: {dest} }} }} }} ]
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/ready", timeout=1)
            return True
        except OSError:
            time.sleep(0.1)
    return False


def apply(l7mpctl, text, tmp):
    path = os.path.join(tmp, "apply.yaml")
    with open(path, "w") as f:
        f.write(text)
    out = subprocess.run([l7mpctl, "--server", SERVER, "apply", "-f", path], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"l7mpctl apply failed: {out.stderr}")


def etcd_start(tmp):
    """A fresh single-member etcd on loopback with its data in /dev/shm (or tmp); returns the process."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else tmp
    data = tempfile.mkdtemp(prefix="l7mp-bench-etcd-", dir=shm)
    proc = start(["etcd", "--name", "bench", "--data-dir", data,
                  "--listen-client-urls", f"http://127.0.0.1:{ETCD_CLIENT}",
                  "--advertise-client-urls", f"http://127.0.0.1:{ETCD_CLIENT}",
                  "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PEER}",
                  "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PEER}",
                  "--initial-cluster", f"bench=http://127.0.0.1:{ETCD_PEER}"], os.path.join(tmp, "etcd.log"))
    proc.data_dir = data
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ETCD_CLIENT}/health", timeout=1) as r:
                if b'"true"' in r.read():
                    return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise SystemExit("etcd did not become healthy (see etcd.log)")


def scenario(args, resources, store):
    """One run: a fresh control plane (and store) with `resources` objects, args.agents clients, one change."""
    with tempfile.TemporaryDirectory() as tmp:
        etcd = None
        if store == "etcd":
            etcd = etcd_start(tmp)
            url = f"etcd://127.0.0.1:{ETCD_CLIENT}/l7mp-bench"
        else:
            url = f"embedded:{tmp}/store"
        ctl = start([args.control, "--listen", f"127.0.0.1:{GRPC}", "--store", url,
                     "--admin", f"127.0.0.1:{ADMIN}", "-l", "warn"], os.path.join(tmp, "control.log"))
        try:
            if not ready():
                raise SystemExit("l7mp-control did not become ready")
            # The service every agent runs, and filler resources that select nobody (they cost translation only).
            base = [target("svc", 7000), vsvc("svc", 9000, "svc")]
            filler = max(0, resources - 2)
            for i in range(filler // 2):
                base.append(target(f"t{i}", 7000, "app: nobody"))
                base.append(vsvc(f"v{i}", 9000, f"t{i}", "app: nobody"))
            t0 = time.time()
            for i in range(0, len(base), 500):
                apply(args.l7mpctl, "---\n".join(base[i:i + 500]), tmp)
            stored_s = time.time() - t0
            log(f"  stored {len(base)} resources in {stored_s:.1f} s")
            idle = rss_kib(ctl.pid)
            change = os.path.join(tmp, "change.yaml")
            with open(change, "w") as f:
                f.write(target("svc", 7001))
            cpu0 = cpu_s(ctl.pid)
            proc = subprocess.Popen([args.scale, "--server", SERVER, "--clients", str(args.agents), "--labels",
                                     "app=scale", "--change", change, "--settle", "2", "--hold"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The example prints a line once every stream is configured and idle, then waits for ours.
            first = proc.stdout.readline()
            streams = rss_kib(ctl.pid)
            if first:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            try:
                stdout, stderr = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            cpu1 = cpu_s(ctl.pid)
            after = rss_kib(ctl.pid)
            if proc.returncode != 0 or not first:
                raise SystemExit(f"xds_scale failed: {stderr[-2000:]}")
            out_lines = stdout.strip().splitlines()
            r = json.loads(out_lines[-1])
            r.update({
                "store": store,
                "resources": len(base),
                "applied_per_s": round(len(base) / stored_s) if stored_s > 0 else 0,
                "control_rss_idle_kib": idle,
                "control_rss_streams_kib": streams,
                "control_rss_after_change_kib": after,
                "rss_per_agent_kib": round((streams - idle) / args.agents, 1),
                "control_cpu_s_connect_and_change": round(cpu1 - cpu0, 2),
            })
            return r
        finally:
            stop(ctl)
            if etcd is not None:
                stop(etcd)
                shutil.rmtree(etcd.data_dir, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tgt = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/l7mp/target"))
    p.add_argument("--control", default=f"{tgt}/release/l7mp-control")
    p.add_argument("--l7mpctl", default=f"{tgt}/release/l7mpctl")
    p.add_argument("--scale", default=f"{tgt}/release/examples/xds_scale")
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--resources", type=int, default=10000)
    p.add_argument("--stores", default="embedded,etcd", help="store backends to compare (embedded, etcd)")
    p.add_argument("--smoke", action="store_true", help="20 agents, 100 resources (CI)")
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    if args.smoke:
        args.agents, args.resources = 20, 100
    stores = [s for s in args.stores.split(",") if s]
    for s in stores:
        if s not in ("embedded", "etcd"):
            raise SystemExit(f"--stores: unknown store {s!r} (embedded, etcd)")
    if "etcd" in stores and shutil.which("etcd") is None:
        if os.environ.get("L7MP_REQUIRE_ETCD") == "1":
            raise SystemExit("etcd is not installed and L7MP_REQUIRE_ETCD=1 (apt-get install etcd-server)")
        log("note: etcd is not installed (apt-get install etcd-server): measuring the embedded store only")
        stores.remove("etcd")
    runs = [(store, res) for res in (2, args.resources) for store in stores]
    rows = []
    for store, res in runs:
        log(f"[{len(rows) + 1}/{len(runs)}] {store} store, {args.agents} agents, {res} resources")
        r = scenario(args, res, store)
        log(f"  {json.dumps(r)}")
        rows.append(r)
    lines = [
        "| store | agents | resources | objects/s applied | change ACKed by all: p50 | p99 | max "
        "| control RSS per agent stream | control CPU (connect + change) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['store']} | {r['clients']} | {r['resources']} | {r['applied_per_s']} "
                     f"| {r['p50_s'] * 1000:.0f} ms | {r['p99_s'] * 1000:.0f} ms "
                     f"| {r['max_s'] * 1000:.0f} ms | {r['rss_per_agent_kib']} KiB | {r['control_cpu_s_connect_and_change']} s |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    bad = [r for r in rows if r["updated"] < r["clients"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
