#!/usr/bin/env python3
"""An encrypted conversation across two servers, driven by matrix-nio 0.26 with its e2e
extra (vodozemac).

Usage: python nio_e2ee_federated.py A_BASE_URL A_SERVER_NAME B_BASE_URL B_SERVER_NAME

Alice (on A) and Bob (on B) log in with crypto stores and upload their keys. Alice creates
an encrypted room and invites Bob, who joins it through A. Alice sends a message: nio on her
side queries Bob's keys and claims one of his one-time keys (A asks B), sends him the room
key as an encrypted to-device message (A sends it to B) and encrypts the message. Bob must
decrypt it; then he answers the same way and Alice must decrypt his answer. Prints one line
per step and "OK".
"""
import asyncio
import secrets
import sys
import tempfile

from nio import (AsyncClient, JoinResponse, KeysUploadResponse, LoginResponse, MegolmEvent,
                 RoomCreateResponse, RoomMessageText, RoomSendResponse, SyncResponse)

from nio_common import ENCRYPTED_CONFIG as CONFIG, Failure, check, expect, register, step


async def client_for(base, server_name, store, name, password):
    client = AsyncClient(base, f"@{name}:{server_name}", store_path=store, config=CONFIG)
    expect(await client.login(password, device_name=f"{name}'s nio"), LoginResponse, f"login {name}")
    if client.should_upload_keys:
        expect(await client.keys_upload(), KeysUploadResponse, f"keys upload {name}")
    return client


async def sync(client, what):
    return expect(await client.sync(timeout=500, full_state=False), SyncResponse, what)


async def until(client, what, found, tries=40):
    """Sync `client` until `found(response)` answers something true; answers it."""
    for _ in range(tries):
        resp = await sync(client, what)
        hit = found(resp)
        if hit:
            return hit
        await asyncio.sleep(0.25)
    raise Failure(f"never saw {what}")


def decrypted_in(room, event_id):
    def find(resp):
        joined = resp.rooms.join.get(room)
        for event in (joined.timeline.events if joined else []):
            if isinstance(event, RoomMessageText) and event.event_id == event_id:
                return event
            if isinstance(event, MegolmEvent) and event.event_id == event_id:
                raise Failure("could not decrypt: the room key did not arrive")
        return None
    return find


async def run(a_base, a_name, b_base, b_name):
    tag = secrets.token_hex(4)
    password = "pw-" + tag
    alice_name, bob_name = f"alice_{tag}", f"bob_{tag}"
    register(a_base, alice_name, password)
    register(b_base, bob_name, password)
    with tempfile.TemporaryDirectory() as a_store, tempfile.TemporaryDirectory() as b_store:
        alice = await client_for(a_base, a_name, a_store, alice_name, password)
        bob = await client_for(b_base, b_name, b_store, bob_name, password)
        try:
            await sync(alice, "alice first sync")
            await sync(bob, "bob first sync")
            step("both devices uploaded identity and one-time keys on their own servers")
            room = expect(await alice.room_create(
                name="secret", invite=[bob.user_id],
                initial_state=[{"type": "m.room.encryption", "state_key": "",
                                "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]),
                RoomCreateResponse, "createRoom").room_id
            await until(bob, "bob's invite", lambda resp: room in resp.rooms.invite)
            expect(await bob.join(room), JoinResponse, "join")
            await sync(bob, "bob sync (joined)")
            await until(alice, "bob joined, on alice's server",
                        lambda resp: bob.user_id in alice.rooms[room].users if room in alice.rooms else False)
            check(alice.rooms[room].encrypted, "alice's nio does not see the room as encrypted")
            check(bob.rooms[room].encrypted, "bob's nio does not see the room as encrypted (his server's sync)")
            step("encrypted room created on A and joined from B")

            sent = expect(await alice.room_send(room, "m.room.message",
                                                {"msgtype": "m.text", "body": "from alice, sealed"},
                                                ignore_unverified_devices=True),
                          RoomSendResponse, "alice's encrypted send")
            check(bob.device_id in alice.device_store[bob.user_id],
                  "alice's client never learnt bob's device through her server")
            step("alice queried bob's keys and claimed one across servers, and sent ciphertext")
            got = await until(bob, "alice's message, decrypted", decrypted_in(room, sent.event_id))
            check(got.body == "from alice, sealed" and got.decrypted, f"decrypted: {got}")
            step("bob received the room key by to-device from A and decrypted alice's message")

            sent = expect(await bob.room_send(room, "m.room.message",
                                              {"msgtype": "m.text", "body": "from bob, sealed"},
                                              ignore_unverified_devices=True),
                          RoomSendResponse, "bob's encrypted send")
            got = await until(alice, "bob's answer, decrypted", decrypted_in(room, sent.event_id))
            check(got.body == "from bob, sealed" and got.decrypted, f"decrypted: {got}")
            step("alice received bob's room key by to-device from B and decrypted his answer")
            print("OK", flush=True)
        finally:
            await alice.close()
            await bob.close()


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: nio_e2ee_federated.py A_BASE_URL A_SERVER_NAME B_BASE_URL B_SERVER_NAME")
    try:
        asyncio.run(run(*sys.argv[1:]))
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
