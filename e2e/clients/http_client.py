#!/usr/bin/env python3
"""An independent HTTP client (`httpx`, with `h2` for HTTP/2) for the agent's end-to-end tests.

Usage: http_client.py [--http2] < requests.json
Reads a JSON list of requests `{"method", "url", "headers": {..}, "body": "<text>"}`, sends them in order on one
client (so HTTP/1.1 connections are kept alive and HTTP/2 requests share a connection; `--http2` speaks HTTP/2 with
prior knowledge over cleartext), and prints a JSON list of responses
`{"status", "version", "headers": [[name, value], ...], "body": "<text>"}`. Exits 1 with a message on a failure.
"""
import json
import sys

import httpx


def main() -> None:
    http2 = "--http2" in sys.argv[1:]
    requests = json.load(sys.stdin)
    out = []
    with httpx.Client(http1=not http2, http2=http2, timeout=5.0) as client:
        for r in requests:
            resp = client.request(
                r.get("method", "GET"),
                r["url"],
                headers=r.get("headers", {}),
                content=r.get("body", "").encode() if "body" in r else None,
            )
            out.append(
                {
                    "status": resp.status_code,
                    "version": resp.http_version,
                    "headers": [[k, v] for k, v in resp.headers.multi_items()],
                    "body": resp.content.decode("utf-8", "replace"),
                }
            )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure to the test
        print(f"http_client failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
