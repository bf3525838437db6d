"""Small helpers shared by the side-by-side benchmark scripts (ws_bench.py, http_bench.py, tls_bench.py): logging,
waiting for a port, starting and stopping a peer as its own process group, a TCP discard sink. Python standard
library only."""

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


# A TCP discard server in one process (epoll, non-blocking, 1 MiB reads): it keeps up with a loopback bulk stream
# (faster than `socat -u ... fork` here) and accepts thousands of connections a second without forking, so a
# connection-rate measurement is not bounded by the sink.
SINK = r"""
import selectors, socket, sys
sel = selectors.EpollSelector()
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2])))
ls.listen(4096)
ls.setblocking(False)
sel.register(ls, selectors.EVENT_READ)
view = memoryview(bytearray(1 << 20))
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is ls:
            while True:
                try:
                    c, _ = ls.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
            continue
        try:
            n = s.recv_into(view)
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            n = 0
        if n == 0:
            sel.unregister(s)
            s.close()
"""


def start_sink(host, port, logpath):
    """Starts the discard sink on host:port (see SINK); stop it with stop()."""
    return start([sys.executable, "-c", SINK, host, str(port)], logpath)
