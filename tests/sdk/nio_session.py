#!/usr/bin/env python3
"""End-to-end account/session test driven by the real matrix-nio SDK (0.26.0).

Usage: python nio_session.py BASE_URL      (e.g. http://127.0.0.1:8008)

Covers: register (UIA m.login.dummy), password login with a device name, whoami,
device list/rename, display name set/get, device deletion behind UIA password auth,
and logout (the old token must then fail with M_UNKNOWN_TOKEN).
Prints one line per step and "OK" at the end; exits non-zero on the first failure.

Why we go through nio and not raw HTTP: nio validates every response against its own
JSON schemas and turns anything that does not match into an ErrorResponse. That
catches shape bugs a spec-reading test would miss, e.g.:
  * login/register responses must carry user_id, device_id AND access_token;
  * every device in GET /devices must have device_id, display_name, last_seen_ip
    and last_seen_ts keys (null allowed, missing is not);
  * "empty" successes (PUT /devices/{id}, PUT displayname, POST logout,
    POST delete_devices) must be exactly `{}` -- any extra key makes nio report
    "unknown error";
  * errors need both "errcode" and "error", otherwise nio loses the errcode;
  * delete_devices' UIA challenge is recognised only on HTTP 401.
When nio rejects a body it logs "Error validating response: <why>" on stderr (also seen,
harmlessly, for the expected whoami errors below) and returns "unknown error".
"""
import asyncio
import secrets
import sys

from nio import (AsyncClient, DeleteDevicesAuthResponse,
                 DeleteDevicesResponse, DevicesResponse, LoginResponse, LogoutResponse,
                 ProfileGetDisplayNameResponse, ProfileSetDisplayNameResponse,
                 RegisterResponse, UpdateDeviceResponse, WhoamiError, WhoamiResponse)

from nio_common import CONFIG, Failure, check, expect, step


async def device_map(client, what):
    """GET /devices -> {device_id: display_name}."""
    resp = expect(await client.devices(), DevicesResponse, what)
    return {d.id: d.display_name for d in resp.devices}


async def run(base):
    localpart = "nio_" + secrets.token_hex(5)
    password = "pw-" + secrets.token_hex(8)
    reg_dev_name, login_dev_name = "nio register device", "nio login device"
    c1 = AsyncClient(base, config=CONFIG)
    c2 = None
    try:
        # 1. Register. nio's register() sends a single POST /register with
        #    auth={"type": "m.login.dummy"} and NO session: the server must accept
        #    completing the dummy stage on the first request (Synapse does).
        r = expect(await c1.register(localpart, password, device_name=reg_dev_name),
                   RegisterResponse, "register")
        check(r.user_id.startswith(f"@{localpart}:"), f"register: user_id {r.user_id!r}")
        check(r.device_id and r.access_token, "register: empty device_id/access_token")
        user_id, dev1 = r.user_id, r.device_id
        step(f"register {user_id} device {dev1}")

        # 2. A second client logs in as the same user with a password + device name.
        c2 = AsyncClient(base, user=user_id, config=CONFIG)
        r = expect(await c2.login(password=password, device_name=login_dev_name),
                   LoginResponse, "login")
        check(r.user_id == user_id, f"login: user_id {r.user_id!r} != {user_id!r}")
        check(r.device_id and r.device_id != dev1, f"login: bad new device_id {r.device_id!r}")
        dev2 = r.device_id
        step(f"login second device {dev2}")

        # 3. whoami reflects the token's user and device.
        r = expect(await c2.whoami(), WhoamiResponse, "whoami")
        check(r.user_id == user_id, f"whoami: user_id {r.user_id!r}")
        check(r.device_id == dev2, f"whoami: device_id {r.device_id!r} != {dev2!r}")
        step("whoami")

        # 4. Both devices listed, with the initial_device_display_name each one sent.
        devs = await device_map(c2, "devices")
        check({dev1, dev2} <= devs.keys(), f"devices: want {dev1},{dev2}; got {devs}")
        check(devs[dev2] == login_dev_name, f"devices: login name {devs[dev2]!r}")
        check(devs[dev1] == reg_dev_name, f"devices: register name {devs[dev1]!r}")
        step(f"devices lists both: {devs}")

        # 5. Rename device 1 from client 2 and read it back.
        expect(await c2.update_device(dev1, {"display_name": "renamed by nio"}),
               UpdateDeviceResponse, "update_device")
        devs = await device_map(c2, "devices after rename")
        check(devs.get(dev1) == "renamed by nio", f"rename not visible: {devs}")
        step("update_device display_name")

        # 6. Profile display name round trip.
        name = "Nio Tester " + secrets.token_hex(3)
        expect(await c2.set_displayname(name), ProfileSetDisplayNameResponse,
               "set_displayname")
        r = expect(await c2.get_displayname(), ProfileGetDisplayNameResponse,
                   "get_displayname")
        check(r.displayname == name, f"get_displayname: {r.displayname!r} != {name!r}")
        step(f"set/get displayname {name!r}")

        # 7. Delete device 1 behind UIA: the first call (no auth) must return the 401
        #    challenge with a session and a m.login.password flow; the second call
        #    completes it with the password.
        r = expect(await c2.delete_devices([dev1]), DeleteDevicesAuthResponse,
                   "delete_devices (UIA challenge)")
        stages = [s for f in r.flows for s in f.get("stages", [])]
        check("m.login.password" in stages, f"delete_devices: no password stage: {r.flows}")
        auth = {"type": "m.login.password", "session": r.session, "password": password,
                "identifier": {"type": "m.id.user", "user": user_id}}
        expect(await c2.delete_devices([dev1], auth), DeleteDevicesResponse,
               "delete_devices (with auth)")
        devs = await device_map(c2, "devices after delete")
        check(dev1 not in devs and dev2 in devs, f"after delete: {devs}")
        # Deleting a device must also revoke its access token.
        r = await c1.whoami()
        check(isinstance(r, WhoamiError) and r.status_code == "M_UNKNOWN_TOKEN",
              f"deleted device's token still usable / wrong error: {r}")
        step(f"delete_devices {dev1} with password UIA; its token is revoked")

        # 8. Logout, then the old token must be rejected. nio blanks access_token on
        #    logout, so put the old one back to really test the server.
        token = c2.access_token
        expect(await c2.logout(), LogoutResponse, "logout")
        c2.access_token = token
        r = await c2.whoami()
        check(isinstance(r, WhoamiError), f"whoami after logout succeeded: {r}")
        check(r.status_code == "M_UNKNOWN_TOKEN", f"whoami after logout: {r}")
        check(r.transport_response.status == 401,
              f"whoami after logout: HTTP {r.transport_response.status}, want 401")
        step("logout; old token -> 401 M_UNKNOWN_TOKEN")
    finally:
        await c1.close()
        if c2 is not None:
            await c2.close()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: nio_session.py BASE_URL")
    try:
        asyncio.run(run(sys.argv[1].rstrip("/")))
    except Failure as e:
        print(f"FAIL {e}", file=sys.stderr)
        sys.exit(1)
    except (OSError, asyncio.TimeoutError) as e:  # aiohttp connection errors are OSErrors
        print(f"FAIL cannot reach {sys.argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    print("OK")


if __name__ == "__main__":
    main()
