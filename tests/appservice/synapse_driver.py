#!/usr/bin/env python3
"""Runs an appservice check against Synapse the way conduit's Rust integration test runs it
against conduit, to show the check passes on the reference homeserver.

    tests/appservice/synapse_driver.py mautrix|bridge [--runs N]

What it does, as the Rust driver does:
  1. picks a free loopback port P for the appservice's listener and writes the registration
     (id bridge, url http://127.0.0.1:P, random as/hs tokens, sender bridgebot, ephemeral on,
     exclusive namespaces @bridge_.*:localhost and #bridge_.*:localhost, protocol checknet);
  2. starts a fresh Synapse (server_name localhost, RESET=1) with that file in
     app_service_config_files, through /work/shared/peers/synapse/synapse.sh;
  3. runs the check as `PROGRAM CHECK <homeserver URL> <registration path>` with piped stdin and
     stdout, echoing its lines; on the line `REQUEST restart-server` it stops and starts Synapse
     on the same port and database and answers `done`;
  4. passes when the check exits 0 and its last line is `OK`.

Environment: SYNAPSE_SH (default /work/shared/peers/synapse/synapse.sh), SYNAPSE_HOME (default
~/.cache/synapse-as), SYNAPSE_PORT (default a free port), CONDUIT_TEST_PYTHON (default
~/.cache/as-venv/bin/python), CONDUIT_TEST_NODE (default node on PATH).
"""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SYNAPSE_SH = os.environ.get("SYNAPSE_SH", "/work/shared/peers/synapse/synapse.sh")
SYNAPSE_HOME = os.environ.get("SYNAPSE_HOME", os.path.expanduser("~/.cache/synapse-as"))
CHECK_TIMEOUT = 600


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registration(port):
    return f"""id: bridge
url: http://127.0.0.1:{port}
as_token: {secrets.token_hex(24)}
hs_token: {secrets.token_hex(24)}
sender_localpart: bridgebot
rate_limited: false
receive_ephemeral: true
de.sorunome.msc2409.push_ephemeral: true
protocols: [checknet]
namespaces:
  users: [{{exclusive: true, regex: '@bridge_.*:localhost'}}]
  aliases: [{{exclusive: true, regex: '#bridge_.*:localhost'}}]
  rooms: []
"""


def synapse(action, env, reset=False):
    env = dict(env, RESET="1" if reset else "0")
    started = time.monotonic()
    proc = subprocess.run(["bash", SYNAPSE_SH, action], env=env, capture_output=True, text=True)
    print(f"[driver] synapse {action}: {proc.stdout.strip()} ({time.monotonic() - started:.1f}s)",
          file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"[driver] synapse.sh {action} failed:\n{proc.stderr}")


def check_command(which, url, reg_path):
    if which == "mautrix":
        python = os.environ.get("CONDUIT_TEST_PYTHON", os.path.expanduser("~/.cache/as-venv/bin/python"))
        return [python, os.path.join(HERE, "mautrix_check.py"), url, reg_path]
    if which == "bridge":
        node = os.environ.get("CONDUIT_TEST_NODE", shutil.which("node") or "node")
        return [node, os.path.join(HERE, "bridge_check.mjs"), url, reg_path]
    raise SystemExit(f"unknown check {which!r}: mautrix or bridge")


def run_once(which):
    synapse_port = int(os.environ.get("SYNAPSE_PORT") or free_port())
    as_port = free_port()
    conf_dir = os.path.join(SYNAPSE_HOME, "appservice")
    os.makedirs(conf_dir, exist_ok=True)
    reg_path = os.path.join(conf_dir, "bridge.yaml")
    with open(reg_path, "w") as f:
        f.write(registration(as_port))
    extra_path = os.path.join(conf_dir, "extra.yaml")
    with open(extra_path, "w") as f:
        f.write(f"app_service_config_files: [{reg_path}]\n")
    env = dict(os.environ, SYNAPSE_HOME=SYNAPSE_HOME, SYNAPSE_PORT=str(synapse_port),
               SYNAPSE_EXTRA_CONFIG=extra_path)
    url = f"http://127.0.0.1:{synapse_port}"

    synapse("stop", env)
    synapse("start", env, reset=True)
    started = time.monotonic()
    check = subprocess.Popen(check_command(which, url, reg_path), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(HERE)))  # the repo root, as cargo test
    # A watchdog, so a hung check cannot hang the driver.
    timer = threading.Timer(CHECK_TIMEOUT, check.kill)
    timer.start()
    last = None
    try:
        for line in check.stdout:
            line = line.rstrip("\n")
            print(f"[check] {line}", flush=True)
            if line.strip():
                last = line.strip()
            if line.strip() == "REQUEST restart-server":
                synapse("stop", env)
                synapse("start", env)
                check.stdin.write("done\n")
                check.stdin.flush()
        rc = check.wait()
    finally:
        timer.cancel()
        synapse("stop", env)
    took = time.monotonic() - started
    passed = rc == 0 and last == "OK"
    print(f"[driver] {which} check {'passed' if passed else 'FAILED'} (exit {rc}, last line "
          f"{last!r}) in {took:.1f}s", flush=True)
    return passed


def main():
    args = sys.argv[1:]
    if not args:
        raise SystemExit(__doc__)
    which = args[0]
    runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 1
    passed = 0
    for i in range(runs):
        print(f"[driver] run {i + 1}/{runs}", flush=True)
        if run_once(which):
            passed += 1
        else:
            break
    print(f"[driver] {passed} of {runs} runs passed", flush=True)
    sys.exit(0 if passed == runs else 1)


if __name__ == "__main__":
    main()
