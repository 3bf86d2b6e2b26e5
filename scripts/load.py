#!/usr/bin/env python3
"""Quick load run against a Matrix homeserver's client API.

Dependencies: Python stdlib + aiohttp (PyPI; pinned in scripts/requirements-test.txt --
it is also what matrix-nio uses, so one venv serves both test scripts).

Usage: python scripts/load.py BASE_URL [--users N] [--whoami M] [--send S] [--concurrency C]

Phases, each with C concurrent workers and a fixed number of operations:
  register  N users through the UIA flow: POST /register without auth -> 401 with a
            session, then POST again with auth {type: m.login.dummy, session}
            (2 HTTP requests per registration; latency covers both)
  login     each of those users with m.login.password (1 request each)
  whoami    M calls to GET /account/whoami, round-robin over the login tokens
  send      S messages (PUT /rooms/{id}/send/m.room.message/{txn}) into one public
            room that the first user creates and every user joins (joins not timed),
            round-robin over the users
For each phase prints count, errors, operations/s, and p50/p90/p99 latency in ms.
Exits 1 if any request failed (after printing the table), 2 on bad usage.

Safety: only loopback targets are accepted (the host must resolve to 127.0.0.0/8 or
::1), every phase is bounded in count, each request has a timeout, and the whole run
has a deadline (--deadline seconds).
"""
import argparse
import asyncio
import ipaddress
import os
import secrets
import sys
import time
from urllib.parse import urlsplit

import aiohttp

MAX_OPS = 100_000  # hard cap per phase: this is a quick run, not a soak test


def loopback_only(base_url):
    """Accept only literal loopback IPs or "localhost" (no DNS lookup of other names)."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        sys.exit(f"bad BASE_URL {base_url!r}")
    host = parts.hostname
    if host.lower() == "localhost":
        return
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"refusing target {host!r}: only 127.0.0.0/8, ::1 or localhost")


def pct(sorted_ms, p):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, int(round(p / 100 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


class Phase:
    def __init__(self, name):
        self.name, self.lat_ms, self.errors, self.first_error = name, [], 0, None

    def fail(self, msg):
        self.errors += 1
        self.first_error = self.first_error or msg


SERVER_PID = None  # set by --pid: the server's CPU time is then reported per phase


def server_cpu_seconds():
    """User + system CPU time of the server process (Linux /proc), or None."""
    if SERVER_PID is None:
        return None
    with open(f"/proc/{SERVER_PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_phase(name, count, concurrency, op):
    """Run op(i) for i in range(count) on `concurrency` workers; time each op."""
    ph, nxt = Phase(name), iter(range(count))
    cpu0 = server_cpu_seconds()

    async def worker():
        for i in nxt:  # shared iterator: each index is taken by exactly one worker
            t0 = time.perf_counter()
            try:
                err = await op(i)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                err = f"{type(e).__name__}: {e}"
            if err:
                ph.fail(err)
            else:
                ph.lat_ms.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, max(count, 1)))))
    ph.wall = time.perf_counter() - t0
    ph.cpu = None if cpu0 is None else server_cpu_seconds() - cpu0
    return ph


async def json_of(resp):
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return {}


async def main_async(a):
    api = a.base_url.rstrip("/") + "/_matrix/client/v3"
    run_id = secrets.token_hex(4)
    password = "load-" + secrets.token_hex(8)
    users = [f"load_{run_id}_{i}" for i in range(a.users)]
    tokens = [None] * a.users
    timeout = aiohttp.ClientTimeout(total=a.timeout)
    conn = aiohttp.TCPConnector(limit=a.concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as http:

        async def register(i):
            body = {"username": users[i], "password": password}
            async with http.post(f"{api}/register", json=body) as r:
                j = await json_of(r)
                if r.status != 401 or "session" not in j:
                    return f"register stage 1: HTTP {r.status} {j}"
            body["auth"] = {"type": "m.login.dummy", "session": j["session"]}
            async with http.post(f"{api}/register", json=body) as r:
                j = await json_of(r)
                if r.status != 200 or "access_token" not in j:
                    return f"register stage 2: HTTP {r.status} {j}"

        async def login(i):
            body = {"type": "m.login.password", "password": password,
                    "identifier": {"type": "m.id.user", "user": users[i]},
                    "initial_device_display_name": "load.py"}
            async with http.post(f"{api}/login", json=body) as r:
                j = await json_of(r)
                if r.status != 200 or not j.get("access_token") or not j.get("device_id"):
                    return f"login: HTTP {r.status} {j}"
                tokens[i] = j["access_token"]

        live = []

        async def whoami(i):
            tok = live[i % len(live)]
            async with http.get(f"{api}/account/whoami",
                                headers={"Authorization": f"Bearer {tok}"}) as r:
                j = await json_of(r)
                if r.status != 200 or not j.get("user_id"):
                    return f"whoami: HTTP {r.status} {j}"

        room = []

        async def send(i):
            tok = live[i % len(live)]
            url = f"{api}/rooms/{room[0]}/send/m.room.message/load-{run_id}-{i}"
            body = {"msgtype": "m.text", "body": f"load message {i}"}
            async with http.put(url, json=body, headers={"Authorization": f"Bearer {tok}"}) as r:
                j = await json_of(r)
                if r.status != 200 or not j.get("event_id"):
                    return f"send: HTTP {r.status} {j}"

        phases = [await run_phase("register", a.users, a.concurrency, register),
                  await run_phase("login", a.users, a.concurrency, login)]
        live.extend(t for t in tokens if t)
        if not live:
            print("no successful logins: skipping whoami and send", file=sys.stderr)
            return phases
        phases.append(await run_phase("whoami", a.whoami, a.concurrency, whoami))
        if a.send:
            auth = {"Authorization": f"Bearer {live[0]}"}
            async with http.post(f"{api}/createRoom", json={"preset": "public_chat"}, headers=auth) as r:
                j = await json_of(r)
                if r.status != 200:
                    sys.exit(f"createRoom: HTTP {r.status} {j}")
                room.append(j["room_id"])
            for tok in live[1:]:
                async with http.post(f"{api}/join/{room[0]}", json={},
                                     headers={"Authorization": f"Bearer {tok}"}) as r:
                    if r.status != 200:
                        sys.exit(f"join: HTTP {r.status} {await json_of(r)}")
            phases.append(await run_phase("send", a.send, a.concurrency, send))
    return phases


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("base_url")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--whoami", type=int, default=2000)
    p.add_argument("--send", type=int, default=0, help="messages to send (0: skip)")
    p.add_argument("--pid", type=int, help="server process: report its CPU ms per operation")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--timeout", type=float, default=30, help="per request, seconds")
    p.add_argument("--deadline", type=float, default=900, help="whole run, seconds")
    a = p.parse_args()
    for n in ("users", "whoami", "concurrency"):
        if not 1 <= getattr(a, n) <= MAX_OPS:
            p.error(f"--{n} must be in 1..{MAX_OPS}")
    if not 0 <= a.send <= MAX_OPS:
        p.error(f"--send must be in 0..{MAX_OPS}")
    loopback_only(a.base_url)
    global SERVER_PID
    SERVER_PID = a.pid

    print(f"target {a.base_url}  users={a.users} whoami={a.whoami} send={a.send} "
          f"concurrency={a.concurrency}")
    try:
        phases = asyncio.run(asyncio.wait_for(main_async(a), a.deadline))
    except asyncio.TimeoutError:
        sys.exit(f"run exceeded --deadline {a.deadline}s")
    print(f"{'phase':<9}{'count':>7}{'errors':>8}{'ops/s':>10}"
          f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'cpu ms/op':>11}")
    for ph in phases:
        lat = sorted(ph.lat_ms)
        rate = len(lat) / ph.wall if ph.wall > 0 else float("nan")
        cpu = f"{ph.cpu * 1000 / len(lat):.3f}" if ph.cpu is not None and lat else "-"
        print(f"{ph.name:<9}{len(lat):>7}{ph.errors:>8}{rate:>10.1f}"
              f"{pct(lat, 50):>9.1f}{pct(lat, 90):>9.1f}{pct(lat, 99):>9.1f}{cpu:>11}")
    print("(register = 2 HTTP requests per op: UIA challenge + m.login.dummy)")
    failed = [ph for ph in phases if ph.errors]
    for ph in failed:
        print(f"{ph.name}: {ph.errors} errors, first: {ph.first_error}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
