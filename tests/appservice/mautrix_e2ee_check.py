#!/usr/bin/env python3
"""An encrypting bridge: mautrix-python's OlmMachine in appservice mode (the way mautrix
bridges run with `encryption.appservice` and `encryption.msc4190` on) answers an encrypted
message from a matrix-nio user, for conduit's appservice integration test.

    python mautrix_e2ee_check.py <homeserver base URL> <registration YAML path>

The registration must have `org.matrix.msc3202: true` and `io.element.msc4190: true`. The
bridge's bot creates its device with `PUT /devices/{deviceId}` (MSC4190, no login), uploads
its keys as that device through the appservice token, and never syncs: its to-device
messages, one-time key counts and device-list changes come in the homeserver's
transactions (MSC2409/MSC3202). A matrix-nio user (with its vodozemac crypto) creates an
encrypted room, invites the bot and sends a message; the bridge must get the room key from
a transaction, decrypt the message and reply encrypted, and nio must decrypt the reply.

Prints `ok   <step>` per passed step and `OK` last; on a failure `FAIL: ...` and exit 1.
Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import sys
import tempfile
import time
import traceback
import urllib.parse

import aiohttp
import yaml
from aiohttp import web

import mautrix_check as check
from mautrix_check import CheckFailed, expect, ok
from mautrix.api import Method, Path
from mautrix.appservice import AppService
from mautrix.client import Client
from mautrix.client.state_store import MemoryStateStore
from mautrix.crypto import OlmMachine
from mautrix.crypto.store import StateStore
from mautrix.crypto.store.memory import MemoryCryptoStore
from mautrix.types import (EncryptedEvent, EncryptionAlgorithm, EventType, Membership,
                           RoomEncryptionStateEventContent, TrustState)
from nio import (AsyncClient, AsyncClientConfig, JoinedMembersResponse, LoginResponse,
                 KeysUploadResponse, RoomCreateResponse, RoomMessageText, RoomSendResponse,
                 SyncResponse, MegolmEvent)

WAIT = 40.0
OVERALL = 240.0
BOT_DEVICE = "BRIDGEBOTDEV"
NIO = AsyncClientConfig(max_timeouts=2, max_limit_exceeded=0, request_timeout=20,
                        backoff_factor=0.1, max_timeout_retry_wait_time=2,
                        encryption_enabled=True, store_sync_tokens=True)

# The step log, failure type and bounded wait are the plain bridge check's.
wait_for = functools.partial(check.wait_for, timeout=WAIT)


def nio_expect(resp, cls, what):
    if not isinstance(resp, cls):
        raise CheckFailed(f"{what}: expected {cls.__name__}, got {type(resp).__name__}: {resp}")
    return resp


class Recorder:
    """Keeps every transaction body the homeserver sends, before the SDK reads it."""

    def __init__(self) -> None:
        self.transactions: list[dict] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        if "/transactions/" in request.path and request.method == "PUT":
            self.transactions.append(json.loads(await request.read()))
        return await handler(request)

    def values(self, key: str) -> list:
        return [t[key] for t in self.transactions if key in t]

    def to_device(self) -> list[dict]:
        return [m for batch in self.values("de.sorunome.msc2409.to_device") for m in batch]

    def changed(self) -> set[str]:
        return {u for lists in self.values("org.matrix.msc3202.device_lists")
                for u in lists.get("changed", [])}


class Rooms(StateStore):
    """What the OlmMachine asks of the bridge's room state: which rooms are encrypted and
    which rooms a user shares with it."""

    def __init__(self) -> None:
        self.encrypted: dict[str, RoomEncryptionStateEventContent] = {}
        self.members: dict[str, set[str]] = {}

    async def is_encrypted(self, room_id):
        return room_id in self.encrypted

    async def get_encryption_info(self, room_id):
        return self.encrypted.get(room_id)

    async def find_shared_rooms(self, user_id):
        return [room for room, members in self.members.items() if user_id in members]


def register_user(base: str, name: str, password: str) -> None:
    import urllib.request
    url = f"{base}/_matrix/client/v3/register"
    body = {"username": name, "password": password}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    session = None
    try:
        urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        session = json.loads(e.read())["session"]
    body["auth"] = {"type": "m.login.dummy", "session": session}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()


async def run(hs_url: str, registration_path: str) -> None:
    with open(registration_path) as f:
        reg = yaml.safe_load(f)
    expect(reg.get("org.matrix.msc3202") is True and reg.get("io.element.msc4190") is True,
           "a registration with org.matrix.msc3202 and io.element.msc4190", reg)
    url = urllib.parse.urlparse(reg["url"])
    server = "localhost"
    bot_mxid = f"@{reg['sender_localpart']}:{server}"
    recorder = Recorder()
    rooms = Rooms()
    state: dict = {"decrypted": [], "reply": None, "errors": []}

    az = AppService(
        server=hs_url, domain=server, as_token=reg["as_token"], hs_token=reg["hs_token"],
        bot_localpart=reg["sender_localpart"], id=reg["id"], ephemeral_events=True,
        encryption_events=True, aiohttp_params={"middlewares": [recorder.middleware]},
        log=logging.getLogger("check.appservice"),
    )

    # The bridge's crypto client: the bot, acting through the appservice token.
    client = Client(mxid=bot_mxid, base_url=hs_url, token=reg["as_token"],
                    state_store=MemoryStateStore())
    machine = OlmMachine(client, MemoryCryptoStore(bot_mxid, "check-pickle-key"), rooms)
    machine.share_keys_min_trust = TrustState.UNVERIFIED
    machine.send_keys_min_trust = TrustState.UNVERIFIED
    az.otk_handler = machine.handle_as_otk_counts
    az.device_list_handler = machine.handle_as_device_lists
    az.to_device_handler = machine.handle_as_to_device_event

    async def reply(room_id: str, to_event: str) -> None:
        await machine.share_group_session(room_id, sorted(rooms.members[room_id]))
        content = {"msgtype": "m.text", "body": "hello from the encrypted bridge",
                   "m.relates_to": {"m.in_reply_to": {"event_id": to_event}}}
        encrypted = await machine.encrypt_megolm_event(room_id, EventType.ROOM_MESSAGE, content)
        state["reply"] = await az.intent.send_message_event(room_id, EventType.ROOM_ENCRYPTED,
                                                            encrypted)

    @az.matrix_event_handler
    async def on_event(evt) -> None:
        try:
            if evt.type == EventType.ROOM_MEMBER:
                members = rooms.members.setdefault(evt.room_id, set())
                if evt.content.membership == Membership.JOIN:
                    members.add(evt.state_key)
                elif evt.content.membership in (Membership.LEAVE, Membership.BAN):
                    members.discard(evt.state_key)
                if evt.content.membership == Membership.INVITE and evt.state_key == bot_mxid:
                    await az.intent.join_room_by_id(evt.room_id)
                    encryption = await az.intent.get_state_event(evt.room_id,
                                                                 EventType.ROOM_ENCRYPTION)
                    rooms.encrypted[evt.room_id] = encryption
                    joined = await az.intent.get_joined_members(evt.room_id)
                    members.update(joined.keys())
            elif isinstance(evt, EncryptedEvent):
                session_id = evt.content.session_id
                if not await machine.crypto_store.has_group_session(evt.room_id, session_id):
                    await machine.wait_for_session(evt.room_id, session_id, timeout=15)
                decrypted = await machine.decrypt_megolm_event(evt)
                state["decrypted"].append(decrypted.content.body)
                if decrypted.content.body == "hello encrypted bridge":
                    await reply(evt.room_id, evt.event_id)
        except Exception as e:  # the check reports it; the bridge keeps running
            traceback.print_exc(file=sys.stderr)
            state["errors"].append(f"{type(e).__name__}: {e}")

    await az.start(host=url.hostname, port=url.port)
    nio = None
    store = tempfile.TemporaryDirectory()
    try:
        # (a) The bot's device, made without a login, and its keys uploaded as it.
        await client.create_device_msc4190(device_id=BOT_DEVICE, initial_display_name="Bridge bot")
        expect(client.device_id == BOT_DEVICE, "the bot's device ID", client.device_id)
        await machine.load()
        await machine.share_keys()
        devices = [d["device_id"] for d in (await client.api.request(Method.GET, Path.v3.devices))["devices"]]
        expect(BOT_DEVICE in devices, f"{BOT_DEVICE} among the bot's devices", devices)
        keys = await client.api.request(Method.POST, Path.v3.keys.query, {"device_keys": {bot_mxid: []}})
        expect(BOT_DEVICE in keys["device_keys"].get(bot_mxid, {}), "the device's keys on the server", keys)
        ok("the bot's device created through PUT /devices (MSC4190) and its keys uploaded as it")

        # (b) A nio user invites the bot into an encrypted room.
        tag = secrets.token_hex(4)
        name, password = f"alice_{tag}", f"pw-{tag}"
        register_user(hs_url, name, password)
        nio = AsyncClient(hs_url, f"@{name}:{server}", store_path=store.name, config=NIO)
        nio_expect(await nio.login(password, device_name="alice's nio"), LoginResponse, "nio login")
        if nio.should_upload_keys:
            nio_expect(await nio.keys_upload(), KeysUploadResponse, "nio keys upload")
        room = nio_expect(await nio.room_create(
            name="encrypted bridge room", invite=[bot_mxid],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]),
            RoomCreateResponse, "createRoom").room_id

        async def bot_joined():
            resp = nio_expect(await nio.joined_members(room), JoinedMembersResponse, "members")
            return any(m.user_id == bot_mxid for m in resp.members)
        await wait_for("the bot to join", bot_joined)
        await wait_for("the bridge to see the room as encrypted",
                       lambda: rooms.encrypted.get(room) is not None and nio.user_id in rooms.members.get(room, ()))
        expect(rooms.encrypted[room].algorithm == EncryptionAlgorithm.MEGOLM_V1, "megolm",
               rooms.encrypted[room])
        await wait_for("Alice in the bridge's device-list changes", lambda: nio.user_id in recorder.changed(),
                       show=recorder.changed)
        ok("the bot joined the encrypted room on invite; Alice's device list reached the bridge")

        # (c) Alice's encrypted message: nio claims a key of the bot's device and sends it the
        # room key; the bridge gets it in a transaction and decrypts the message.
        await nio.sync(timeout=0, full_state=True)
        sent = nio_expect(await nio.room_send(room, "m.room.message",
                                              {"msgtype": "m.text", "body": "hello encrypted bridge"},
                                              ignore_unverified_devices=True),
                          RoomSendResponse, "encrypted send")
        await wait_for("the bridge to decrypt Alice's message",
                       lambda: "hello encrypted bridge" in state["decrypted"] or state["errors"],
                       show=lambda: (state, recorder.to_device()))
        expect(not state["errors"], "no errors in the bridge", state["errors"])
        for_bot = [m for m in recorder.to_device()
                   if m.get("to_user_id") == bot_mxid and m.get("to_device_id") == BOT_DEVICE]
        expect(any(m.get("type") == "m.room.encrypted" and m.get("sender") == nio.user_id for m in for_bot),
               "Alice's olm message to the bot's device in a transaction", recorder.to_device())
        ok("the room key came to the bot's device in a transaction (MSC2409); the bridge decrypted the message")

        counts = [c.get(bot_mxid, {}).get(BOT_DEVICE) for c in
                  recorder.values("org.matrix.msc3202.device_one_time_keys_count")]
        counts = [c for c in counts if c]
        expect(counts, "one-time key counts of the bot's device in a transaction",
               recorder.values("org.matrix.msc3202.device_one_time_keys_count"))
        expect(all(isinstance(c.get("signed_curve25519"), int) for c in counts), "counts per algorithm", counts)
        ok(f"one-time key counts for the bot's device came with it (MSC3202): {counts[-1]}")

        # (d) The bridge's encrypted reply, decrypted by nio.
        await wait_for("the bridge's reply to be sent", lambda: state["reply"] or state["errors"])
        expect(not state["errors"], "no errors in the bridge", state["errors"])
        decrypted = None
        deadline = time.monotonic() + WAIT
        while decrypted is None and time.monotonic() < deadline:
            resp = nio_expect(await nio.sync(timeout=1000), SyncResponse, "nio sync")
            joined = resp.rooms.join.get(room)
            for event in (joined.timeline.events if joined else []):
                if event.event_id == state["reply"]:
                    if isinstance(event, MegolmEvent):
                        raise CheckFailed("nio could not decrypt the reply: no room key from the bridge")
                    decrypted = event
        expect(isinstance(decrypted, RoomMessageText), "the reply, decrypted", decrypted)
        expect(decrypted.body == "hello from the encrypted bridge" and decrypted.decrypted,
               "the bridge's words", decrypted)
        expect(decrypted.sender == bot_mxid, "from the bot", decrypted.sender)
        ok("nio decrypted the bridge's encrypted reply (the bridge shared its room key by to-device)")
        _ = sent
    finally:
        if nio is not None:
            await nio.close()
        store.cleanup()
        await client.api.session.close()
        await az.stop()


def main() -> None:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(asyncio.wait_for(run(sys.argv[1], sys.argv[2]), OVERALL))
    except CheckFailed as e:
        print(f"FAIL: {e}", flush=True)
        sys.exit(1)
    except asyncio.TimeoutError:
        print(f"FAIL: the check did not finish within {OVERALL:.0f}s; the last passed step was "
              f"{check.last_step!r}", flush=True)
        sys.exit(1)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        print(f"FAIL: {type(e).__name__}: {e} (after step {check.last_step!r})", flush=True)
        sys.exit(1)
    print("OK", flush=True)


if __name__ == "__main__":
    main()
