#!/usr/bin/env python3
"""What the agent's Prometheus metrics cost: UDP through the agent with metrics on (and scraped every second) against
`--no-metrics`, in one run.

The agent (one worker thread) listens on UDP+TCP 127.0.0.1:15401 (iperf3 needs both) and forwards to an iperf3
server on 15411; with metrics on, an HTTP listener on 15402 is routed to a Prometheus cluster and a scraper thread
GETs it every second (and checks that the UDP counters move). Two measurements per run, each with iperf3 64-byte
datagrams:

- unlimited (`-b 0`): packets/s delivered through the agent (the peers share the machine's cores, so this is the
  rate the whole setup reaches);
- fixed 50k pps (`-b 25.6M`): the agent's CPU time per delivered packet (less noisy than a rate).

Runs alternate on/off, --pairs rounds; the table gives medians and the median of the per-round ratios on/off.
Python standard library only (plus bench.py's helpers).

    cargo build --release -p l7mp-agent
    python3 e2e/bench/metrics_bench.py [--smoke] [--out FILE]

Exit status 1 if the agent did not start, carried no traffic, or a scrape failed; 0 otherwise.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
from benchlib import accepts, log, start, stop  # noqa: E402

HOST, PORT, METRICS_PORT, IPERF_PORT = "127.0.0.1", 15401, 15402, 15411

CONFIG = """admin: {log_level: warn}
listeners:
  - name: tcp-in
    spec: {protocol: TCP, port: %(port)d}
    rules: [{action: {route: {destination: tcp-up}}}]
  - name: udp-in
    spec: {protocol: UDP, port: %(port)d}
    rules: [{action: {route: {destination: udp-up}}}]
  - name: metrics
    spec: {protocol: HTTP, port: %(metrics)d}
    rules: [{action: {route: {destination: prometheus}}}]
clusters:
  - name: tcp-up
    spec: {protocol: TCP, port: %(up)d}
    endpoints: [{spec: {address: 127.0.0.1}}]
  - name: udp-up
    spec: {protocol: UDP, port: %(up)d}
    endpoints: [{spec: {address: 127.0.0.1}}]
  - name: prometheus
    spec: {protocol: Prometheus}
""" % {"port": PORT, "metrics": METRICS_PORT, "up": IPERF_PORT}


class Scraper(threading.Thread):
    """GETs the metrics every `interval` seconds; remembers the last rx packet count of udp-in and any failure."""

    def __init__(self, interval=1.0):
        super().__init__(daemon=True)
        self.interval, self.scrapes, self.error, self.last_rx = interval, 0, None, 0.0
        self._stop_ev = threading.Event()

    def run(self):
        while not self._stop_ev.wait(self.interval):
            try:
                with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, METRICS_PORT), timeout=5) as r:
                    text = r.read().decode("utf-8", "replace")
                self.scrapes += 1
                key = 'l7mp_listener_packets_total{direction="rx",listener="udp-in"} '
                for line in text.splitlines():
                    if line.startswith(key):
                        self.last_rx = float(line[len(key):])
            except OSError as e:
                self.error = str(e)

    def stop(self):
        self._stop_ev.set()
        self.join(timeout=6)


def measure(agent, cfg, workdir, mode, duration):
    """One round of one mode: (unlimited pps, CPU µs per packet at 50k pps, scrapes) or raises RuntimeError."""
    cmd = [agent, "-c", cfg, "-l", "warn", "--threads", "1"] + (["--no-metrics"] if mode == "off" else [])
    logpath = os.path.join(workdir, "agent-%s.log" % mode)
    proc = start(cmd, logpath)
    scraper = None
    try:
        if not accepts(HOST, PORT):
            raise RuntimeError("agent (%s) did not start: %s" % (mode, bench.tail(logpath)))
        if mode == "on":
            scraper = Scraper()
            scraper.start()
        res, err = bench.run_iperf(workdir, PORT, duration, udp=True, rate="0")
        if err or not res or res["recv_packets"] == 0:
            raise RuntimeError("unlimited run (%s): %s" % (mode, err or "no packets delivered"))
        pps = res["recv_pps"]
        sampler = bench.ProcSampler([proc.pid])
        res2, err = bench.run_iperf(workdir, PORT, duration, udp=True, rate="25.6M", sampler=sampler)
        if err or not res2 or res2["recv_packets"] == 0:
            raise RuntimeError("50k run (%s): %s" % (mode, err or "no packets delivered"))
        cpu_s = sampler.cpu_percent() / 100.0 * (sampler.t1 - sampler.t0)
        us_per_pkt = 1e6 * cpu_s / res2["recv_packets"]
        scrapes = 0
        if scraper:
            scraper.stop()
            if scraper.error:
                raise RuntimeError("scrape failed: " + scraper.error)
            if duration >= 2 and scraper.last_rx <= 0:
                raise RuntimeError("the scrapes never showed UDP packets")
            scrapes = scraper.scrapes
        if proc.poll() is not None:
            raise RuntimeError("agent (%s) exited: %s" % (mode, bench.tail(logpath)))
        return pps, us_per_pkt, scrapes
    finally:
        if scraper:
            scraper.stop()
        stop(proc)


def main():
    cache = os.environ.get("L7MP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "l7mp")
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(cache, "target")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", default=os.environ.get("L7MP_AGENT") or os.path.join(target, "release", "l7mp-agent"))
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="1 s, 1 round (CI)")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    if args.smoke:
        args.duration, args.pairs = 1.0, 1
    if not os.path.isfile(args.agent):
        log("l7mp-agent not found at %s (cargo build --release -p l7mp-agent)" % args.agent)
        return 1
    bench.IPERF_PORT = IPERF_PORT
    dur = int(max(1, round(args.duration)))
    rows = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="l7mp-metricsbench-") as d:
        cfg = os.path.join(d, "metrics.yaml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        for r in range(args.pairs):
            # Alternate which mode goes first, so a drift of the machine does not favour one.
            order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
            for mode in order:
                try:
                    pps, us, scrapes = measure(args.agent, cfg, d, mode, dur)
                except RuntimeError as e:
                    log("FAIL %s" % e)
                    return 1
                rows[mode].append((pps, us))
                log("[round %d/%d] metrics %-3s %8.1f kpps unlimited, %.3f us CPU/packet at 50k pps%s"
                    % (r + 1, args.pairs, mode, pps / 1e3, us, ", %d scrapes" % scrapes if mode == "on" else ""))
    med = lambda xs: statistics.median(xs) if xs else 0.0  # noqa: E731
    pps_ratio = med([on[0] / off[0] for on, off in zip(rows["on"], rows["off"]) if off[0]])
    cpu_ratio = med([on[1] / off[1] for on, off in zip(rows["on"], rows["off"]) if off[1]])
    table = [
        "| metrics | UDP 64 B unlimited (kpps delivered) | agent CPU per packet at 50k pps (µs) |",
        "|---|---|---|",
        "| on, scraped every 1 s | %.1f | %.3f |" % (med([x[0] for x in rows["on"]]) / 1e3, med([x[1] for x in rows["on"]])),
        "| off (`--no-metrics`) | %.1f | %.3f |" % (med([x[0] for x in rows["off"]]) / 1e3, med([x[1] for x in rows["off"]])),
        "| on / off (median of %d rounds) | %.3f | %.3f |" % (args.pairs, pps_ratio, cpu_ratio),
    ]
    text = "\n".join(table) + "\n"
    sys.stdout.write(text)
    sys.stdout.write("ratio on/off: packet rate %.3f, CPU per packet %.3f (%s, %d s per run)\n"
                     % (pps_ratio, cpu_ratio, "smoke" if args.smoke else "full", dur))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
