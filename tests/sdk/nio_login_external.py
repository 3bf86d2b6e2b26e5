#!/usr/bin/env python3
"""Logins through the company's systems, driven by the real matrix-nio SDK (0.26.0).

Usage:
  python nio_login_external.py ldap BASE_URL USER PASSWORD
      password login (`AsyncClient.login`) with a password the LDAP directory keeps: the
      account is made at that first login; whoami, the display name the directory gave,
      a sync, a second device, then logout.
  python nio_login_external.py jwt BASE_URL TOKEN USER_ID
      `org.matrix.login.jwt` through `AsyncClient.login_raw`, nio's way to send a login
      type it does not know; whoami and a sync.

Prints one line per step and "OK" at the end; exits non-zero on the first failure.
"""
import asyncio
import sys

from nio import (AsyncClient, LoginResponse, LogoutResponse, ProfileGetDisplayNameResponse,
                 SyncResponse, WhoamiResponse)

from nio_common import CONFIG, Failure, check, expect, step


async def ldap(base, user, password):
    client = AsyncClient(base, user, config=CONFIG)
    try:
        resp = expect(await client.login(password, device_name="nio LDAP"), LoginResponse, "LDAP login")
        step(f"logged in with the directory's password as {resp.user_id}")
        who = expect(await client.whoami(), WhoamiResponse, "whoami")
        check(who.user_id == resp.user_id, f"whoami says {who.user_id}")
        name = expect(await client.get_displayname(resp.user_id), ProfileGetDisplayNameResponse,
                      "display name")
        check(name.displayname == "Bob Builder", f"display name {name.displayname!r}")
        step("display name from the directory")
        expect(await client.sync(timeout=0), SyncResponse, "sync")
        step("synced")
        second = AsyncClient(base, user, config=CONFIG)
        try:
            again = expect(await second.login(password), LoginResponse, "second login")
            check(again.device_id != resp.device_id, "a second device")
            step("second login, new device")
        finally:
            await second.close()
        expect(await client.logout(), LogoutResponse, "logout")
        step("logged out")
    finally:
        await client.close()


async def jwt(base, token, user_id):
    client = AsyncClient(base, config=CONFIG)
    try:
        resp = expect(await client.login_raw({"type": "org.matrix.login.jwt", "token": token}),
                      LoginResponse, "JWT login")
        check(resp.user_id == user_id, f"logged in as {resp.user_id}")
        step(f"logged in with a JWT as {resp.user_id}")
        who = expect(await client.whoami(), WhoamiResponse, "whoami")
        check(who.user_id == user_id, f"whoami says {who.user_id}")
        expect(await client.sync(timeout=0), SyncResponse, "sync")
        step("synced")
    finally:
        await client.close()


async def main():
    mode, base, *rest = sys.argv[1:]
    if mode == "ldap":
        await ldap(base, *rest)
    elif mode == "jwt":
        await jwt(base, *rest)
    else:
        raise Failure(f"unknown mode {mode}")
    print("OK", flush=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)
