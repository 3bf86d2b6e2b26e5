#!/usr/bin/env python3
"""Media driven by the real matrix-nio SDK (0.26.0): one user shares an image, another
downloads it and its thumbnail.

Usage: python nio_media.py BASE_URL

nio 0.26 uploads with `POST /_matrix/media/v3/upload` (streamed, chunked when no size is
given) and downloads and thumbnails through the authenticated `/_matrix/client/v1/media/*`
endpoints with its access token, so the legacy endpoints' freeze does not affect it.

alice uploads a PNG she built (400x300) and sends it to a room as m.image; bob joins, reads
the event from /sync, downloads the content (byte-identical, original file name), asks for a
32x32 crop and a 320x240 scale thumbnail and checks their dimensions from the PNG header.
Prints one line per step and "OK".
"""
import asyncio
import io
import secrets
import struct
import sys
import zlib

from nio import (AsyncClient, DownloadResponse, JoinResponse, RegisterResponse,
                 ResizingMethod, RoomCreateResponse, RoomMessageImage, RoomSendResponse, SyncResponse,
                 ThumbnailResponse, UploadResponse)

from nio_common import CONFIG, Failure, check, expect, step


def png(width, height):
    """An RGB PNG with a gradient, written by hand (no imaging library in the venv)."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in ((x * 255) // width, (y * 255) // height, 128))
        for y in range(height)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data):
    check(data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG: {data[:16]!r}")
    return struct.unpack(">II", data[16:24])


async def run(base):
    tag = secrets.token_hex(4)
    alice = AsyncClient(base, config=CONFIG)
    bob = AsyncClient(base, config=CONFIG)
    try:
        expect(await alice.register(f"alice_{tag}", "pw-" + tag), RegisterResponse, "register alice")
        expect(await bob.register(f"bob_{tag}", "pw-" + tag), RegisterResponse, "register bob")

        image = png(400, 300)
        up, _ = await alice.upload(io.BytesIO(image), content_type="image/png", filename="sunset.png")
        up = expect(up, UploadResponse, "upload")
        check(up.content_uri.startswith("mxc://"), f"content uri: {up.content_uri}")
        step(f"alice uploads {len(image)} bytes: {up.content_uri}")

        room = expect(await alice.room_create(name="photos", invite=[bob.user_id]), RoomCreateResponse,
                      "create room").room_id
        content = {"msgtype": "m.image", "body": "sunset.png", "url": up.content_uri,
                   "info": {"mimetype": "image/png", "size": len(image), "w": 400, "h": 300}}
        expect(await alice.room_send(room, "m.room.message", content), RoomSendResponse, "send image")
        expect(await bob.join(room), JoinResponse, "bob joins")
        resp = expect(await bob.sync(timeout=0), SyncResponse, "bob sync")
        images = [e for e in resp.rooms.join[room].timeline.events if isinstance(e, RoomMessageImage)]
        check(len(images) == 1 and images[0].url == up.content_uri, f"image event: {images}")
        step("bob sees the m.image event")

        down = expect(await bob.download(mxc=images[0].url), DownloadResponse, "download")
        check(down.body == image, f"download differs: {len(down.body)} bytes")
        check(down.content_type == "image/png", f"content type: {down.content_type}")
        check(down.filename == "sunset.png", f"file name: {down.filename}")
        step("bob downloads it byte-identical, with its type and name")

        server, media_id = images[0].url[len("mxc://"):].split("/", 1)
        thumb = expect(await bob.thumbnail(server, media_id, 32, 32, ResizingMethod.crop), ThumbnailResponse,
                       "crop thumbnail")
        check(png_size(thumb.body) == (32, 32), f"crop thumbnail size: {png_size(thumb.body)}")
        thumb = expect(await bob.thumbnail(server, media_id, 320, 240, ResizingMethod.scale), ThumbnailResponse,
                       "scale thumbnail")
        check(png_size(thumb.body) == (320, 240), f"scale thumbnail size: {png_size(thumb.body)}")
        check(thumb.content_type == "image/png", f"thumbnail type: {thumb.content_type}")
        step("bob gets 32x32 crop and 320x240 scale thumbnails")

        print("OK", flush=True)
    finally:
        await alice.close()
        await bob.close()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: nio_media.py BASE_URL")
    try:
        asyncio.run(run(sys.argv[1]))
    except Failure as e:
        print(f"FAIL {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
