"""Small helpers shared by the side-by-side benchmark scripts (ws_bench.py, http_bench.py): logging, waiting for a
port, starting and stopping a peer as its own process group. Python standard library only."""

import os
import signal
import socket
import subprocess
import sys
import time


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def accepts(host, port, timeout=10.0):
    """Whether a TCP connection to host:port succeeds within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.3):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def start(cmd, logpath, cwd=None):
    """Starts `cmd` in its own process group, stdout and stderr appended to `logpath`."""
    with open(logpath, "a") as f:
        return subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    """SIGTERM to the process group, SIGKILL after 5 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
