#!/usr/bin/env python3
"""Measure /sync against a Matrix homeserver's client API.

Dependencies: Python stdlib + aiohttp (the venv of scripts/requirements-test.txt).

Usage: python scripts/sync_bench.py BASE_URL [--rooms R] [--members K] [--messages H]
                                            [--idle N] [--wakes W] [--pid PID]

Scenarios:
  setup     K users (registered through the UIA dummy flow), R public rooms created by
            the first user, every user joins every room, H messages per room from
            the members in turn (setup is timed but not a result)
  initial   the first user's initial sync over all R rooms, without and with
            lazy-loaded members (3 runs each; median, min, max in ms, and the size)
  idle      N incremental syncs with nothing new (timeout=0)
  wake      W times: a second user long-polls, the first sends into one room; the time
            from the send's response to the poll's response, and from the send's request
            to the poll's response (send->sync), are recorded
Prints each scenario's latencies. With --pid, prints the server's resident memory (RSS)
after each scenario. Only loopback targets are accepted.
"""
import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import json_of, loopback_only, pct  # noqa: E402


def rss_mib(pid):
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def main_async(a):
    api = a.base_url.rstrip("/") + "/_matrix/client/v3"
    run = secrets.token_hex(3)
    password = "bench-" + secrets.token_hex(8)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=32)) as http:
        sem = asyncio.Semaphore(16)

        async def call(method, path, token=None, body=None):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with sem:
                async with http.request(method, api + path, json=body, headers=headers) as r:
                    j = await json_of(r)
                    if r.status != 200:
                        raise RuntimeError(f"{method} {path}: HTTP {r.status} {j}")
                    return j

        async def register(i):
            name = f"sb_{run}_{i}"
            body = {"username": name, "password": password}
            async with http.post(f"{api}/register", json=body) as r:
                j = await json_of(r)
            body["auth"] = {"type": "m.login.dummy", "session": j["session"]}
            async with http.post(f"{api}/register", json=body) as r:
                j = await json_of(r)
                if r.status != 200:
                    raise RuntimeError(f"register: {r.status} {j}")
                return j["access_token"]

        t0 = time.perf_counter()
        tokens = await asyncio.gather(*(register(i) for i in range(a.members)))
        owner = tokens[0]
        rooms = await asyncio.gather(*(call("POST", "/createRoom", owner, {"preset": "public_chat"}) for _ in range(a.rooms)))
        rooms = [r["room_id"] for r in rooms]
        await asyncio.gather(*(call("POST", f"/join/{room}", tok, {}) for room in rooms for tok in tokens[1:]))

        async def fill(room):
            for m in range(a.messages):
                tok = tokens[m % len(tokens)]
                await call("PUT", f"/rooms/{room}/send/m.room.message/{run}-{m}", tok,
                           {"msgtype": "m.text", "body": f"message {m} in a room of {a.members}"})

        await asyncio.gather(*(fill(room) for room in rooms))
        print(f"setup: {a.members} users, {a.rooms} rooms x {a.messages} messages in "
              f"{time.perf_counter() - t0:.1f} s   rss={rss_mib(a.pid)}")

        async def timed_sync(query, token):
            t = time.perf_counter()
            async with http.get(f"{api}/sync?{query}", headers={"Authorization": f"Bearer {token}"}) as r:
                raw = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"sync: HTTP {r.status} {raw[:200]!r}")
            return (time.perf_counter() - t) * 1000, raw

        results = []
        lazy = json.dumps({"room": {"state": {"lazy_load_members": True}}})
        for label, query in (("initial", ""), ("initial lazy", "filter=" + aiohttp.helpers.quote(lazy, safe=""))):
            runs = []
            size = 0
            for _ in range(3):
                ms, raw = await timed_sync(query, owner)
                runs.append(ms)
                size = len(raw)
            body = json.loads(raw)
            joined = len(body.get("rooms", {}).get("join", {}))
            results.append((label, runs, f"{joined} rooms, {size / 1024:.0f} KiB"))
            print(f"{label:<13} median {statistics.median(runs):8.1f} ms  min {min(runs):8.1f}  max {max(runs):8.1f}"
                  f"  ({joined} rooms, {size / 1024:.0f} KiB)  rss={rss_mib(a.pid)}")

        _, raw = await timed_sync("", owner)
        since = json.loads(raw)["next_batch"]
        idle = []
        for _ in range(a.idle):
            ms, _ = await timed_sync(f"since={since}&timeout=0", owner)
            idle.append(ms)
        idle.sort()
        print(f"idle          p50 {pct(idle, 50):8.2f} ms  p90 {pct(idle, 90):8.2f}  p99 {pct(idle, 99):8.2f}"
              f"  ({len(idle)} syncs)  rss={rss_mib(a.pid)}")

        watcher = tokens[1] if len(tokens) > 1 else owner
        _, raw = await timed_sync("", watcher)
        since = json.loads(raw)["next_batch"]
        wakes = []
        round_trips = []
        for w in range(a.wakes):
            poll = asyncio.ensure_future(timed_sync(f"since={since}&timeout=10000", watcher))
            await asyncio.sleep(0.05)
            started = time.perf_counter()
            await call("PUT", f"/rooms/{rooms[w % len(rooms)]}/send/m.room.message/wake-{run}-{w}", owner,
                       {"msgtype": "m.text", "body": "wake"})
            sent = time.perf_counter()
            _, raw = await poll
            returned = time.perf_counter()
            wakes.append((returned - sent) * 1000)
            round_trips.append((returned - started) * 1000)
            since = json.loads(raw)["next_batch"]
        wakes.sort()
        print(f"wake          p50 {pct(wakes, 50):8.2f} ms  p90 {pct(wakes, 90):8.2f}  p99 {pct(wakes, 99):8.2f}"
              f"  (send response -> long-poll response, {len(wakes)} runs)")
        round_trips.sort()
        print(f"send->sync    p50 {pct(round_trips, 50):8.2f} ms  p90 {pct(round_trips, 90):8.2f}"
              f"  p99 {pct(round_trips, 99):8.2f}  (send request -> long-poll response)  rss={rss_mib(a.pid)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base_url")
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--idle", type=int, default=200)
    p.add_argument("--wakes", type=int, default=50)
    p.add_argument("--pid", type=int, help="server process, for its RSS")
    a = p.parse_args()
    for n in ("rooms", "members", "messages", "idle", "wakes"):
        if not 1 <= getattr(a, n) <= 10_000:
            p.error(f"--{n} must be in 1..10000")
    loopback_only(a.base_url)
    asyncio.run(main_async(a))


if __name__ == "__main__":
    main()
