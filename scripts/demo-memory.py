#!/usr/bin/env python3
"""Does the demo's memory come back? RSS of a demo binary before, during and after floods of
event streams (README, "The demo hub": allocator).

    cargo build --release --example demo --features metrics,tracing
    python3 scripts/demo-memory.py target/release/examples/demo [--streams 5000] [--rounds 3]

Starts the binary (ADDR=127.0.0.1:0, RUST_LOG=warn; extra VAR=value arguments go to its
environment), warms it up, then per round: opens N `GET /events` streams from this process
(each read to the end by its own task), publishes 20 events of 1 KiB to all of them, closes
them all, and samples the server's VmRSS from /proc. Prints one JSON line per round and a
summary. Python's standard library only; loopback only; every wait is bounded.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def http(host, port, method, path, body=b""):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


async def stats(host, port):
    status, body = await http(host, port, "GET", "/stats")
    assert status == 200, body
    return json.loads(body)


async def open_stream(host, port):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    writer.write(b"GET /events HTTP/1.1\r\nhost: demo\r\naccept: text/event-stream\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200"), head

    async def drain():
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, asyncio.CancelledError):
            pass

    return writer, asyncio.ensure_future(drain())


async def wait_open(host, port, want, limit=30):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if (await stats(host, port))["open"] == want:
            return True
        await asyncio.sleep(0.1)
    return False


async def run(args, pid, host, port):
    # Warm up: the page, a publish, a stream opened and closed.
    await http(host, port, "GET", "/")
    await http(host, port, "POST", "/publish", b"warm-up")
    w, t = await open_stream(host, port)
    w.close()
    t.cancel()
    assert await wait_open(host, port, 0)
    await asyncio.sleep(2)
    baseline = rss_kib(pid)
    rounds = []
    for r in range(1, args.rounds + 1):
        before = rss_kib(pid)
        streams = []
        for _ in range(args.streams):
            streams.append(await open_stream(host, port))
        assert await wait_open(host, port, args.streams), "not all streams open"
        payload = b"x" * 1024
        for _ in range(20):
            status, body = await http(host, port, "POST", "/publish", payload)
            assert status == 200, body
        await asyncio.sleep(3)
        held = rss_kib(pid)
        for writer, task in streams:
            writer.close()
        for _, task in streams:
            task.cancel()
        await asyncio.gather(*(t for _, t in streams), return_exceptions=True)
        closed_at = time.monotonic()
        assert await wait_open(host, port, 0), "streams did not close"
        after = {}
        for mark in (0, 2, 5, 10):
            await asyncio.sleep(max(0, closed_at + mark - time.monotonic()))
            after[mark] = rss_kib(pid)
        row = {
            "round": r,
            "streams": args.streams,
            "rss_before_mb": round(before / 1024, 1),
            "rss_open_mb": round(held / 1024, 1),
            **{f"rss_{m}s_after_mb": round(v / 1024, 1) for m, v in after.items()},
        }
        print(json.dumps(row), flush=True)
        rounds.append(row)
    goal = 2 * baseline / 1024 + 20
    last = rounds[-1]["rss_10s_after_mb"]
    print(
        json.dumps(
            {
                "label": args.label,
                "baseline_mb": round(baseline / 1024, 1),
                "peak_mb": max(r["rss_open_mb"] for r in rounds),
                "last_10s_after_mb": last,
                "goal_mb": round(goal, 1),
                "met": last <= goal,
            }
        ),
        flush=True,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("env", nargs="*", help="VAR=value for the server")
    p.add_argument("--streams", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--label", default="")
    args = p.parse_args()
    env = dict(os.environ, ADDR="127.0.0.1:0", RUST_LOG="warn")
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    server = subprocess.Popen([args.binary], env=env, stdout=subprocess.PIPE, text=True)
    addr = []
    ready = threading.Event()

    def read_stdout():
        for line in server.stdout:
            m = re.match(r"tower-sse demo on http://([\d.]+):(\d+)", line)
            if m and not addr:
                addr.append((m.group(1), int(m.group(2))))
                ready.set()

    threading.Thread(target=read_stdout, daemon=True).start()
    try:
        if not ready.wait(30):
            sys.exit("the demo did not print its address")
        host, port = addr[0]
        asyncio.run(run(args, server.pid, host, port))
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
