#!/usr/bin/env python3
"""An encrypted message round trip driven by matrix-nio 0.26 with its e2e extra (vodozemac).

Usage: python nio_e2ee.py BASE_URL

Alice and Bob log in with crypto stores; each uploads device and one-time keys; Alice
creates an encrypted room and invites Bob, who joins. Alice sends a message: nio queries
Bob's keys, claims a one-time key, sends the room key to his device as an encrypted
to-device message and encrypts the message with it. Bob's sync must deliver the room key
and decrypt the message. The event the server stored must be ciphertext only. Prints one
line per step and "OK".
"""
import asyncio
import json
import secrets
import sys
import tempfile
import urllib.request

from nio import (AsyncClient, JoinResponse, KeysUploadResponse, LoginResponse, MegolmEvent,
                 RoomCreateResponse, RoomMessageText, RoomSendResponse, SyncResponse)

from nio_common import ENCRYPTED_CONFIG as CONFIG, Failure, check, expect, register, step


def stored_event(base, token, room_id, event_id):
    url = f"{base}/_matrix/client/v3/rooms/{room_id}/event/{event_id}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    return json.loads(urllib.request.urlopen(req).read())


async def client_for(base, store, name, password):
    client = AsyncClient(base, f"@{name}:localhost", store_path=store, config=CONFIG)
    expect(await client.login(password, device_name=f"{name}'s nio"), LoginResponse, f"login {name}")
    if client.should_upload_keys:
        expect(await client.keys_upload(), KeysUploadResponse, f"keys upload {name}")
    return client


async def sync(client, what):
    return expect(await client.sync(timeout=0, full_state=False), SyncResponse, what)


async def run(base):
    tag = secrets.token_hex(4)
    password = "pw-" + tag
    names = (f"alice_{tag}", f"bob_{tag}")
    for name in names:
        register(base, name, password)
    with tempfile.TemporaryDirectory() as a_store, tempfile.TemporaryDirectory() as b_store:
        alice = await client_for(base, a_store, names[0], password)
        bob = await client_for(base, b_store, names[1], password)
        try:
            step("both devices uploaded identity and one-time keys")
            room = expect(await alice.room_create(
                name="secret", invite=[bob.user_id],
                initial_state=[{"type": "m.room.encryption", "state_key": "",
                                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]),
                RoomCreateResponse, "createRoom").room_id
            await sync(bob, "bob sync (invite)")
            expect(await bob.join(room), JoinResponse, "join")
            await sync(bob, "bob sync (joined)")
            await sync(alice, "alice sync (bob joined)")
            check(alice.rooms[room].encrypted, "nio does not see the room as encrypted")
            step("encrypted room created and joined")

            sent = expect(await alice.room_send(room, "m.room.message",
                                                {"msgtype": "m.text", "body": "the secret plan"},
                                                ignore_unverified_devices=True),
                          RoomSendResponse, "encrypted send")
            step("alice claimed bob's key, shared the room key and sent ciphertext")

            stored = stored_event(base, bob.access_token, room, sent.event_id)
            check(stored["type"] == "m.room.encrypted", f"stored event type {stored['type']}")
            check("the secret plan" not in json.dumps(stored), "plaintext reached the server")
            check(stored["content"].get("algorithm") == "m.megolm.v1.aes-sha2", f"content: {stored['content']}")
            step("the server holds only ciphertext")

            decrypted = None
            for _ in range(5):
                resp = await sync(bob, "bob sync (message)")
                joined = resp.rooms.join.get(room)
                for event in (joined.timeline.events if joined else []):
                    if isinstance(event, RoomMessageText) and event.event_id == sent.event_id:
                        decrypted = event
                    elif isinstance(event, MegolmEvent) and event.event_id == sent.event_id:
                        raise Failure("bob could not decrypt: the room key did not arrive")
                if decrypted:
                    break
            check(decrypted is not None, "bob never saw the message")
            check(decrypted.body == "the secret plan" and decrypted.decrypted, f"decrypted: {decrypted}")
            step("bob received the room key by to-device and decrypted the message")
            print("OK", flush=True)
        finally:
            await alice.close()
            await bob.close()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: nio_e2ee.py BASE_URL")
    try:
        asyncio.run(run(sys.argv[1]))
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
