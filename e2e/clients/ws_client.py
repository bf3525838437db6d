#!/usr/bin/env python3
"""An independent WebSocket client (the `websockets` library) for the agent's end-to-end tests.

Usage: ws_client.py URL
Connects to URL, checks that text and binary messages come back whole, in order and with their frame type (the
agent routes the connection to an Echo cluster), that a ping is answered, and that the close handshake completes.
Prints `ok` and exits 0, or prints what went wrong and exits 1.
"""
import asyncio
import sys

import websockets


async def main(url: str) -> None:
    async with websockets.connect(url, subprotocols=["chat.v1"], open_timeout=5) as ws:
        assert ws.subprotocol == "chat.v1", f"subprotocol {ws.subprotocol!r}"
        texts = [f"text {i} " + "é" * i for i in range(50)]
        for t in texts:
            await ws.send(t)
        for t in texts:
            got = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(got, str), f"expected a text frame, got {type(got).__name__}"
            assert got == t, f"{got!r} != {t!r}"
        blobs = [bytes((i * 7 + j) % 256 for j in range(1 + i * 997)) for i in range(30)]
        for b in blobs:
            await ws.send(b)
        for b in blobs:
            got = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(got, bytes), f"expected a binary frame, got {type(got).__name__}"
            assert got == b, f"binary message of {len(b)} bytes came back as {len(got)} bytes"
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
    assert ws.close_code == 1000, f"close code {ws.close_code}"


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1]))
    except Exception as e:  # noqa: BLE001 - report any failure to the Rust test
        print(f"FAIL: {type(e).__name__}: {e}")
        sys.exit(1)
    print("ok")
