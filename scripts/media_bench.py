#!/usr/bin/env python3
"""Media throughput and thumbnail timing against a running server, over plain HTTP.

Usage:
  python scripts/media_bench.py BASE_URL [--size-mb 200] [--runs 3] [--jpeg PHOTO.jpg]

Registers a user (the server needs allow_registration = true and a max_upload_size above
--size-mb), then:
- uploads --size-mb of generated, incompressible bytes to POST /_matrix/media/v3/upload
  (streamed in 1 MiB chunks, chunked transfer encoding) and downloads it again from
  /_matrix/client/v1/media/download, reporting MB/s both ways and checking the SHA-256;
- uploads a 12-megapixel JPEG (4000x3000; --jpeg, or one generated with Pillow if it is
  installed) and times the first request of each recommended thumbnail size (decode, resize,
  encode, store) and a repeated request (served from the stored thumbnail).

Only the standard library is needed for the transfer part. Numbers go to stdout; record them
in docs/benchmarks.md with the machine and build they came from.
"""
import argparse
import hashlib
import http.client
import io
import json
import os
import secrets
import sys
import time
import urllib.parse

CHUNK = 1 << 20


def connection(base):
    url = urllib.parse.urlsplit(base)
    cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return cls(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout=600)


def request(base, method, path, body=None, headers=None):
    conn = connection(base)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def register(base):
    name = f"bench_{secrets.token_hex(4)}"
    body = {"username": name, "password": "bench-" + name, "auth": {"type": "m.login.dummy"}}
    status, data = request(base, "POST", "/_matrix/client/v3/register", json.dumps(body),
                           {"Content-Type": "application/json"})
    if status != 200:
        sys.exit(f"register failed ({status}): {data[:200]!r} (is allow_registration on?)")
    return json.loads(data)["access_token"]


def generated(size, digest):
    """`size` pseudo-random bytes in 1 MiB pieces, hashed as they are produced."""
    block = bytearray(os.urandom(CHUNK))
    sent = 0
    counter = 0
    while sent < size:
        piece = bytes(block[: min(CHUNK, size - sent)])
        digest.update(piece)
        yield piece
        sent += len(piece)
        counter += 1
        block[:8] = counter.to_bytes(8, "little")


def upload_stream(base, token, size):
    digest = hashlib.sha256()
    conn = connection(base)
    start = time.perf_counter()
    conn.request("POST", "/_matrix/media/v3/upload?filename=bench.bin", body=generated(size, digest),
                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                 encode_chunked=True)
    resp = conn.getresponse()
    data = resp.read()
    elapsed = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        sys.exit(f"upload failed ({resp.status}): {data[:200]!r}")
    return json.loads(data)["content_uri"], elapsed, digest.hexdigest()


def download_stream(base, token, mxc):
    conn = connection(base)
    path = "/_matrix/client/v1/media/download/" + mxc[len("mxc://"):]
    start = time.perf_counter()
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    digest = hashlib.sha256()
    total = 0
    while True:
        piece = resp.read(CHUNK)
        if not piece:
            break
        digest.update(piece)
        total += len(piece)
    elapsed = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        sys.exit(f"download failed ({resp.status})")
    return total, elapsed, digest.hexdigest()


def photo_jpeg(path):
    if path:
        with open(path, "rb") as f:
            return f.read()
    try:
        from PIL import Image, ImageFilter
    except ImportError:
        sys.exit("no --jpeg given and Pillow is not installed (pip install pillow) to make one")
    # Smooth gradients under noise: decodes like a photo (every block has detail), unlike a
    # flat test card.
    noise = Image.effect_noise((4000, 3000), 40).convert("L")
    gradient = Image.linear_gradient("L").resize((4000, 3000))
    image = Image.merge("RGB", (noise, gradient, noise.filter(ImageFilter.BLUR)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jpeg")
    args = parser.parse_args()
    token = register(args.base)

    size = args.size_mb * 1000 * 1000
    for run in range(1, args.runs + 1):
        mxc, up, sent = upload_stream(args.base, token, size)
        total, down, got = download_stream(args.base, token, mxc)
        if total != size or got != sent:
            sys.exit(f"download differs from upload ({total} bytes)")
        print(f"run {run}: {args.size_mb} MB upload {size / up / 1e6:7.1f} MB/s ({up:.2f} s), "
              f"download {size / down / 1e6:7.1f} MB/s ({down:.2f} s)", flush=True)

    jpeg = photo_jpeg(args.jpeg)
    status, data = request(args.base, "POST", "/_matrix/media/v3/upload?filename=photo.jpg", jpeg,
                           {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"})
    if status != 200:
        sys.exit(f"photo upload failed ({status}): {data[:200]!r}")
    media = json.loads(data)["content_uri"][len("mxc://"):]
    print(f"photo: {len(jpeg) / 1e6:.1f} MB JPEG", flush=True)
    for width, height, method in [(800, 600, "scale"), (640, 480, "scale"), (320, 240, "scale"),
                                  (96, 96, "crop"), (32, 32, "crop")]:
        path = f"/_matrix/client/v1/media/thumbnail/{media}?width={width}&height={height}&method={method}"
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            status, body = request(args.base, "GET", path, headers={"Authorization": f"Bearer {token}"})
            timings.append(time.perf_counter() - start)
            if status != 200:
                sys.exit(f"thumbnail failed ({status}): {body[:200]!r}")
        print(f"thumbnail {width}x{height} {method}: first {timings[0] * 1000:7.1f} ms, "
              f"stored {timings[1] * 1000:6.1f} ms, {len(body)} bytes", flush=True)


if __name__ == "__main__":
    main()
