#!/usr/bin/env python3
"""WebSocket message rate through the agent and through the original l7mp, side by side in one run.

Both proxies run the same configuration (a WebSocket listener on 127.0.0.1:15101 routed to an Echo cluster) with
one worker thread. The load generator is `agent/examples/ws_load.rs` (Rust, tokio-tungstenite, one thread): it
keeps --window 64-byte binary messages in flight on each of --conns WebSockets for --duration seconds and reports
echoed messages per second. Runs alternate between the peers, --pairs rounds; the table gives the medians and the
median of the per-round ratios. Python standard library only.

    cargo build --release -p l7mp-agent --example ws_load
    python3 e2e/bench/ws_bench.py [--smoke] [--out FILE]

Exit status 1 if the agent did not start or echoed nothing; 0 otherwise (a crash of the original is reported).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import accepts, log, start, stop  # noqa: E402

HOST, PORT = "127.0.0.1", 15101
CONFIG = """admin: {log_level: warn}
listeners:
  - name: ws-in
    spec: {protocol: WebSocket, port: %d}
    rules:
      - action:
          route:
            destination: echo
clusters:
  - name: echo
    spec: {protocol: Echo}
""" % PORT


def main():
    cache = os.environ.get("L7MP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l7mp")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(cache, "target")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", default=os.environ.get("L7MP_AGENT") or os.path.join(target, "release", "l7mp-agent"))
    ap.add_argument("--load", default=os.path.join(target, "release", "examples", "ws_load"))
    ap.add_argument("--node-l7mp", default=os.path.join(cache, "node-l7mp", "node_modules", "@l7mp", "l7mp"))
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="1 s, 1 round (CI)")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.pairs = 1.0, 1
    for path, what in ((args.agent, "l7mp-agent"), (args.load, "ws_load")):
        if not os.path.isfile(path):
            log("%s not found at %s (cargo build --release -p l7mp-agent --example ws_load)" % (what, path))
            return 1
    peers = ["l7mp"]
    if shutil.which("node") and os.path.isfile(os.path.join(args.node_l7mp, "l7mp-proxy.js")):
        peers.append("node-l7mp")
    else:
        log("SKIP node-l7mp: not installed (run e2e/bench/setup.sh)")
    rates = {p: [] for p in peers}
    crashes = {p: 0 for p in peers}
    with tempfile.TemporaryDirectory(prefix="l7mp-wsbench-") as d:
        cfg = os.path.join(d, "ws.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        for r in range(args.pairs):
            for p in peers:
                if p == "l7mp":
                    cmd, cwd = [args.agent, "-c", cfg, "-l", "warn", "--threads", "1"], None
                else:
                    cmd, cwd = ["node", "l7mp-proxy.js", "-c", cfg], args.node_l7mp
                proc = start(cmd, os.path.join(d, p + ".log"), cwd=cwd)
                try:
                    if not accepts(HOST, PORT):
                        log("[%d/%d] %s did not start" % (r + 1, args.pairs, p))
                        if p == "l7mp":
                            return 1
                        crashes[p] += 1
                        continue
                    out = subprocess.run(
                        [args.load, "ws://%s:%d/bench" % (HOST, PORT), str(args.duration), str(args.conns),
                         str(args.window)],
                        capture_output=True, text=True, timeout=args.duration + 30,
                    )
                    rate = float(out.stdout.strip() or 0)
                    if proc.poll() is not None:
                        crashes[p] += 1
                    log("[%d/%d] %s: %.0f messages/s%s" % (r + 1, args.pairs, p, rate,
                                                          (" (" + out.stderr.strip() + ")") if out.stderr else ""))
                    rates[p].append(rate)
                finally:
                    stop(proc)
    if not rates["l7mp"] or max(rates["l7mp"]) <= 0:
        log("the agent echoed nothing")
        return 1
    node = rates.get("node-l7mp") or []
    lines = ["| peer | WebSocket echo, messages/s (64 B, %d conns x %d in flight) | x original | crashes |"
             % (args.conns, args.window), "|---|---:|---:|---:|"]
    for p in peers:
        ratio = "–"
        if p == "l7mp" and node:
            pairs = [a / n for a, n in zip(rates["l7mp"], node) if n > 0]
            ratio = "%.1f" % statistics.median(pairs) if pairs else "n/a"
        elif p == "node-l7mp":
            ratio = "1.0"
        lines.append("| %s | %.0f | %s | %d |" % (p, statistics.median(rates[p]) if rates[p] else 0, ratio, crashes[p]))
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
