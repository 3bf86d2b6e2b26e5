//! The content repository through HTTP: uploads (whole, streamed, reserved first), downloads
//! with their headers and ranges, the legacy endpoints' freeze, thumbnails of every format,
//! refusal of corrupt and oversized images, storage (dedupe, retention), and URL previews
//! with the SSRF guard.

use std::{
    io::Cursor,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use image::{DynamicImage, ImageFormat, Rgba, RgbaImage};
use reqwest::{StatusCode, header};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

use conduit::service::clock::Clock as _;

use crate::harness::{Session, TestServer, expect_error};

const V1: &str = "/_matrix/client/v1/media";
const LEGACY: &str = "/_matrix/media/v3";

/// Upload `bytes`; returns the `mxc://` URI.
pub(crate) async fn upload(
    s: &TestServer,
    who: &Session,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> String {
    let resp = upload_raw(s, Some(&who.token), bytes, content_type, filename).await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body["content_uri"].as_str().unwrap().to_owned()
}

pub(crate) async fn upload_raw(
    s: &TestServer,
    token: Option<&str>,
    bytes: Vec<u8>,
    content_type: &str,
    filename: Option<&str>,
) -> reqwest::Response {
    let mut req = s
        .http
        .post(format!("{}{LEGACY}/upload", s.base))
        .header(header::CONTENT_TYPE, content_type)
        .body(bytes);
    if let Some(name) = filename {
        req = req.query(&[("filename", name)]);
    }
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

/// `server/media_id` of an `mxc://` URI.
fn media_path(mxc: &str) -> &str {
    mxc.strip_prefix("mxc://").unwrap()
}

async fn get(s: &TestServer, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(format!("{}{path}", s.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn header_of<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header"))
}

/// An image with some detail (so encoders cannot shrink it to nothing), in `format`.
pub(crate) fn image_bytes(format: ImageFormat, width: u32, height: u32) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8, 255])
    });
    let image = match format {
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(image).into_rgb8()),
        _ => DynamicImage::ImageRgba8(image),
    };
    let mut out = Vec::new();
    image.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

async fn new_user(s: &TestServer, name: &str) -> Session {
    s.register(name, "password-1234").await
}

#[tokio::test]
async fn upload_and_download_round_trip_with_the_spec_headers() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    let bob = new_user(&s, "bob").await;
    let png = image_bytes(ImageFormat::Png, 40, 30);
    let mxc = upload(&s, &alice, png.clone(), "image/png", Some("dot.png")).await;
    assert!(mxc.starts_with("mxc://localhost/"), "{mxc}");

    // Another user downloads it, byte-identical, with the hardening headers.
    let resp = get(&s, &format!("{V1}/download/{}", media_path(&mxc)), Some(&bob.token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-type"), "image/png");
    assert_eq!(header_of(&resp, "content-disposition"), "inline; filename=dot.png");
    assert_eq!(
        header_of(&resp, "content-security-policy"),
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"
    );
    assert_eq!(header_of(&resp, "cross-origin-resource-policy"), "cross-origin");
    assert_eq!(header_of(&resp, "x-content-type-options"), "nosniff");
    assert_eq!(header_of(&resp, "accept-ranges"), "bytes");
    assert_eq!(header_of(&resp, "content-length"), png.len().to_string());
    assert_eq!(resp.bytes().await.unwrap(), png);

    // A file name in the path replaces the uploaded one; `timeout_ms` and `allow_redirect`
    // are accepted.
    let resp = get(
        &s,
        &format!("{V1}/download/{}/holiday%20snap.png?timeout_ms=1000&allow_redirect=true", media_path(&mxc)),
        Some(&bob.token),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-disposition"), "inline; filename=\"holiday snap.png\"");

    // HTML is never inline, and a non-ASCII name is encoded per RFC 8187.
    let mxc = upload(&s, &alice, b"<script>alert(1)</script>".to_vec(), "text/html", Some("évil.html")).await;
    let resp = get(&s, &format!("{V1}/download/{}", media_path(&mxc)), Some(&bob.token)).await;
    assert_eq!(header_of(&resp, "content-type"), "text/html");
    assert_eq!(header_of(&resp, "content-disposition"), "attachment; filename*=utf-8''%C3%A9vil.html");

    // No content type declared: served as octet-stream, as an attachment, without a name.
    let resp = s
        .http
        .post(format!("{}{LEGACY}/upload", s.base))
        .bearer_auth(&alice.token)
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    let mxc = resp.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let resp = get(&s, &format!("{V1}/download/{}", media_path(&mxc)), Some(&bob.token)).await;
    assert_eq!(header_of(&resp, "content-type"), "application/octet-stream");
    assert_eq!(header_of(&resp, "content-disposition"), "attachment");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), [1, 2, 3]);

    // An empty file is a file.
    let mxc = upload(&s, &alice, Vec::new(), "text/plain", None).await;
    let resp = get(&s, &format!("{V1}/download/{}", media_path(&mxc)), Some(&bob.token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn authenticated_endpoints_need_a_token() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    let mxc = upload(&s, &alice, b"secret".to_vec(), "text/plain", None).await;
    let id = media_path(&mxc);
    for path in [
        format!("{V1}/download/{id}"),
        format!("{V1}/download/{id}/name.txt"),
        format!("{V1}/thumbnail/{id}?width=32&height=32"),
        format!("{V1}/config"),
        format!("{V1}/preview_url?url=https://example.com"),
        format!("{LEGACY}/config"),
    ] {
        expect_error(error_of(get(&s, &path, None).await).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
        expect_error(
            error_of(get(&s, &path, Some("wrong")).await).await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
    }
    let resp = upload_raw(&s, None, b"x".to_vec(), "text/plain", None).await;
    expect_error(error_of(resp).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let (status, body) =
        s.post(&format!("{}/create", "/_matrix/media/v1"), None, serde_json::json!({})).await;
    expect_error((status, body), StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    // The access token may also come as a query parameter (nio sends it that way).
    let resp = get(&s, &format!("{V1}/download/{id}?access_token={}", alice.token), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_and_remote_media_are_not_found() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    for path in [
        format!("{V1}/download/localhost/doesnotexist"),
        format!("{V1}/download/other.example/abcdef"),
        format!("{V1}/download/localhost/bad.id"),
        format!("{V1}/thumbnail/other.example/abcdef?width=32&height=32"),
        format!("{V1}/thumbnail/localhost/doesnotexist?width=32&height=32"),
    ] {
        expect_error(
            error_of(get(&s, &path, Some(&alice.token)).await).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
}

#[tokio::test]
async fn upload_size_is_limited_and_advertised() {
    let s = TestServer::start_with(|c| c.max_upload_size = 64 * 1024).await;
    let alice = new_user(&s, "alice").await;
    for path in [format!("{V1}/config"), format!("{LEGACY}/config")] {
        let (status, body) = s.get(&path, Some(&alice.token)).await;
        assert_eq!((status, body["m.upload.size"].as_u64()), (StatusCode::OK, Some(64 * 1024)), "{body}");
    }
    // Declared too large: refused before the body is read.
    let resp =
        upload_raw(&s, Some(&alice.token), vec![0; 64 * 1024 + 1], "application/octet-stream", None).await;
    expect_error(error_of(resp).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    // Streamed without a length: refused once it passes the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..20).map(|_| Ok(vec![1u8; 8 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(tokio_stream_of(chunks));
    let resp = s
        .http
        .post(format!("{}{LEGACY}/upload", s.base))
        .bearer_auth(&alice.token)
        .body(body)
        .send()
        .await
        .unwrap();
    expect_error(error_of(resp).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    // Exactly the limit is fine, and nothing of the refused uploads is left behind.
    upload(&s, &alice, vec![2; 64 * 1024], "application/octet-stream", None).await;
    let tmp = s.dir.path().join("db").join("media").join("tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

/// A stream of ready chunks, for request bodies without a declared length.
fn tokio_stream_of(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> tokio_util::io::ReaderStream<ChunkReader> {
    tokio_util::io::ReaderStream::new(ChunkReader { chunks: chunks.into_iter().collect() })
}

struct ChunkReader {
    chunks: std::collections::VecDeque<Result<Vec<u8>, std::io::Error>>,
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match this.chunks.pop_front() {
            Some(Ok(mut chunk)) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    this.chunks.push_front(Ok(chunk.split_off(n)));
                }
                Poll::Ready(Ok(()))
            }
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }
}

/// Pseudo-random content generated as it is read (never held whole), hashed on the way out.
struct Generated {
    remaining: u64,
    block: Vec<u8>,
    offset: usize,
    counter: u64,
    hasher: Arc<Mutex<Sha256>>,
}

impl Generated {
    fn new(len: u64, hasher: Arc<Mutex<Sha256>>) -> Self {
        // One random-looking mebibyte, with a counter stamped into each repetition so no two
        // blocks are equal.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let block = (0..1 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Self { remaining: len, block, offset: 0, counter: 0, hasher }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let n = (buf.remaining() as u64).min(this.remaining).min((this.block.len() - this.offset) as u64)
            as usize;
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        let piece = &this.block[this.offset..this.offset + n];
        buf.put_slice(piece);
        this.hasher.lock().unwrap().update(piece);
        this.offset += n;
        this.remaining -= n as u64;
        if this.offset == this.block.len() {
            this.offset = 0;
            this.counter += 1;
            this.block[..8].copy_from_slice(&this.counter.to_le_bytes());
        }
        Poll::Ready(Ok(()))
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Watch the process's resident memory until stopped; returns the peak seen.
fn watch_rss() -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut peak = 0;
        while !flag.load(Ordering::Relaxed) {
            peak = peak.max(rss_bytes());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        peak
    });
    (stop, task)
}

/// 200 MB up and down again through the real HTTP stack, byte-identical, while this process
/// (the server and the client both) stays far below the file's size in memory: neither the
/// upload nor the download is ever held whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_file_streams_up_and_down_with_bounded_memory() {
    const SIZE: u64 = 200 * 1000 * 1000;
    let s = TestServer::start_with(|c| c.max_upload_size = 256 * 1024 * 1024).await;
    let alice = new_user(&s, "alice").await;
    let bob = new_user(&s, "bob").await;
    let baseline = rss_bytes();
    let (stop, peak) = watch_rss();

    let sent_hash = Arc::new(Mutex::new(Sha256::new()));
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        Generated::new(SIZE, Arc::clone(&sent_hash)),
        256 * 1024,
    ));
    let started = std::time::Instant::now();
    let resp = s
        .http
        .post(format!("{}{LEGACY}/upload?filename=big.bin", s.base))
        .bearer_auth(&alice.token)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let json: Value = resp.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{json}");
    let upload_time = started.elapsed();
    let mxc = json["content_uri"].as_str().unwrap().to_owned();

    let started = std::time::Instant::now();
    let mut resp = get(&s, &format!("{V1}/download/{}", media_path(&mxc)), Some(&bob.token)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-length"), SIZE.to_string());
    let mut received = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        received.update(&chunk);
        len += chunk.len() as u64;
    }
    let download_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();

    assert_eq!(len, SIZE);
    let sent: [u8; 32] = sent_hash.lock().unwrap().clone().finalize().into();
    let got: [u8; 32] = received.finalize().into();
    assert_eq!(sent, got, "downloaded content differs from the upload");
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "200 MB: upload {:.1} s, download {:.1} s, resident memory {} MiB at start, peak growth {} MiB",
        upload_time.as_secs_f64(),
        download_time.as_secs_f64(),
        baseline >> 20,
        growth >> 20
    );
    assert!(growth < 64 * 1024 * 1024, "resident memory grew by {} MiB", growth >> 20);
}

#[tokio::test]
async fn range_requests() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let mxc = upload(&s, &alice, data.clone(), "video/mp4", None).await;
    let url = format!("{}{V1}/download/{}", s.base, media_path(&mxc));
    let ranged =
        |range: &'static str| s.http.get(&url).bearer_auth(&alice.token).header(header::RANGE, range).send();

    let resp = ranged("bytes=0-9").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header_of(&resp, "content-range"), "bytes 0-9/1000");
    assert_eq!(header_of(&resp, "content-length"), "10");
    assert_eq!(header_of(&resp, "accept-ranges"), "bytes");
    assert_eq!(resp.bytes().await.unwrap(), data[0..10]);

    let resp = ranged("bytes=990-").await.unwrap();
    assert_eq!(header_of(&resp, "content-range"), "bytes 990-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), data[990..]);

    let resp = ranged("bytes=-100").await.unwrap();
    assert_eq!(header_of(&resp, "content-range"), "bytes 900-999/1000");
    assert_eq!(resp.bytes().await.unwrap(), data[900..]);

    let resp = ranged("bytes=500-100000").await.unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), data[500..]);

    let resp = ranged("bytes=1000-").await.unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header_of(&resp, "content-range"), "bytes */1000");

    // Several ranges, or nonsense, get the whole content.
    let resp = ranged("bytes=0-1,5-6").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap(), data);
}

#[tokio::test]
async fn reserved_ids_receive_their_content_later() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    let bob = new_user(&s, "bob").await;
    let create = "/_matrix/media/v1/create";
    let (status, body) = s.post(create, Some(&alice.token), serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mxc = body["content_uri"].as_str().unwrap().to_owned();
    let expires = body["unused_expires_at"].as_u64().unwrap();
    let now = s.clock.now_ms();
    assert!(expires > now + 23 * 3600 * 1000 && expires <= now + 24 * 3600 * 1000, "{body}");
    let id = media_path(&mxc).to_owned();

    // Before the content arrives a download waits up to timeout_ms, then answers 504.
    let resp = get(&s, &format!("{V1}/download/{id}?timeout_ms=50"), Some(&bob.token)).await;
    expect_error(error_of(resp).await, StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED");

    // A download waiting when the upload lands gets the content.
    let waiting = {
        let (url, token) = (format!("{}{V1}/download/{id}?timeout_ms=10000", s.base), bob.token.clone());
        let http = s.http.clone();
        tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    let put = |token: String, body: &'static [u8], id: String| {
        let url = format!("{}{LEGACY}/upload/{id}?filename=later.txt", s.base);
        s.http.put(url).bearer_auth(token).header(header::CONTENT_TYPE, "text/plain").body(body).send()
    };
    // Someone else's ID.
    let resp = put(bob.token.clone(), b"bob's", id.clone()).await.unwrap();
    expect_error(error_of(resp).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // The owner's upload.
    let resp = put(alice.token.clone(), b"arrived later", id.clone()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.json::<Value>().await.unwrap(), serde_json::json!({}));

    let resp = waiting.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-disposition"), "inline; filename=later.txt");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"arrived later");

    // Content cannot be replaced.
    let resp = put(alice.token.clone(), b"again", id.clone()).await.unwrap();
    expect_error(error_of(resp).await, StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");
    // IDs never created, other servers' IDs, and uploaded media are not upload targets.
    let resp = put(alice.token.clone(), b"x", "localhost/neverCreated".to_owned()).await.unwrap();
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let resp = put(alice.token.clone(), b"x", "other.example/abc".to_owned()).await.unwrap();
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let plain = upload(&s, &alice, b"whole".to_vec(), "text/plain", None).await;
    let resp = put(alice.token.clone(), b"x", media_path(&plain).to_owned()).await.unwrap();
    expect_error(error_of(resp).await, StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA");

    // An ID left unused expires: no upload, no download, and it stops counting.
    let (_, body) = s.post(create, Some(&alice.token), serde_json::json!({})).await;
    let stale = media_path(body["content_uri"].as_str().unwrap()).to_owned();
    s.clock.advance_ms(24 * 3600 * 1000 + 1);
    let resp = put(alice.token.clone(), b"too late", stale.clone()).await.unwrap();
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let resp = get(&s, &format!("{V1}/download/{stale}?timeout_ms=0"), Some(&alice.token)).await;
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(s.services.media.sweep_expired_pending().unwrap(), 1);

    // At most five pending IDs per user (Synapse's default); others are not affected.
    for _ in 0..5 {
        let (status, body) = s.post(create, Some(&alice.token), serde_json::json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    expect_error(
        s.post(create, Some(&alice.token), serde_json::json!({})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "M_LIMIT_EXCEEDED",
    );
    let (status, _) = s.post(create, Some(&bob.token), serde_json::json!({})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn legacy_endpoints_do_not_serve_media_uploaded_during_the_freeze() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    let png = image_bytes(ImageFormat::Png, 300, 200);
    let frozen = upload(&s, &alice, png.clone(), "image/png", None).await;
    for path in [
        format!("{LEGACY}/download/{}", media_path(&frozen)),
        format!("{LEGACY}/download/{}/a.png", media_path(&frozen)),
        format!("{LEGACY}/thumbnail/{}?width=32&height=32&method=crop", media_path(&frozen)),
        "/_matrix/media/r0/download/localhost/abc".to_owned(),
    ] {
        expect_error(error_of(get(&s, &path, None).await).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    let resp = get(&s, &format!("{V1}/download/{}", media_path(&frozen)), Some(&alice.token)).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // With the freeze off, media uploaded then is served without a token, and stays served
    // after the freeze is switched on; media uploaded during the freeze does not.
    let mut config = crate::harness::test_config(s.dir.path());
    let dir = s.stop().await;
    config.media_legacy_freeze = false;
    let s = TestServer::boot(config.clone(), dir).await;
    let alice = s.login("alice", "password-1234", None).await;
    let open = upload(&s, &alice, png.clone(), "image/png", Some("open.png")).await;
    let dir = s.stop().await;
    config.media_legacy_freeze = true;
    let s = TestServer::boot(config, dir).await;
    let resp = get(&s, &format!("{LEGACY}/download/{}", media_path(&open)), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header_of(&resp, "content-disposition"), "inline; filename=open.png");
    assert_eq!(resp.bytes().await.unwrap(), png);
    let resp =
        get(&s, &format!("{LEGACY}/thumbnail/{}?width=32&height=32&method=crop", media_path(&open)), None)
            .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = get(&s, &format!("{LEGACY}/download/{}", media_path(&frozen)), None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

async fn thumbnail(s: &TestServer, who: &Session, mxc: &str, query: &str) -> reqwest::Response {
    get(s, &format!("{V1}/thumbnail/{}?{query}", media_path(mxc)), Some(&who.token)).await
}

/// A thumbnail's type and decoded dimensions.
async fn thumbnail_of(
    s: &TestServer,
    who: &Session,
    mxc: &str,
    query: &str,
) -> (String, (u32, u32), Vec<u8>) {
    let resp = thumbnail(s, who, mxc, query).await;
    assert_eq!(resp.status(), StatusCode::OK, "{query}");
    assert!(header_of(&resp, "content-disposition").starts_with("inline"), "{query}");
    assert_eq!(header_of(&resp, "cross-origin-resource-policy"), "cross-origin");
    let content_type = header_of(&resp, "content-type").to_owned();
    let bytes = resp.bytes().await.unwrap().to_vec();
    let image = image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{query}: {e}"));
    (content_type, (image.width(), image.height()), bytes)
}

#[tokio::test]
async fn thumbnails_of_every_format() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    for (format, content_type, thumbnail_type) in [
        (ImageFormat::Png, "image/png", "image/png"),
        (ImageFormat::Jpeg, "image/jpeg", "image/jpeg"),
        (ImageFormat::Gif, "image/gif", "image/png"),
        (ImageFormat::WebP, "image/webp", "image/png"),
    ] {
        let original = image_bytes(format, 1000, 500);
        let mxc = upload(&s, &alice, original.clone(), content_type, None).await;
        let check = async |query: &str, expected_type: &str, size: (u32, u32)| {
            let (ct, dims, bytes) = thumbnail_of(&s, &alice, &mxc, query).await;
            assert_eq!((ct.as_str(), dims), (expected_type, size), "{format:?} {query}");
            bytes
        };
        // The recommended sizes, picked as the smallest at least as large as asked.
        check("width=96&height=96&method=crop", thumbnail_type, (96, 96)).await;
        check("width=10&height=10&method=crop", thumbnail_type, (32, 32)).await;
        let first = check("width=320&height=240&method=scale", thumbnail_type, (320, 160)).await;
        check("width=300&height=200", thumbnail_type, (320, 160)).await;
        check("width=640&height=480&method=scale", thumbnail_type, (640, 320)).await;
        // A stored thumbnail is served again as it was made.
        assert_eq!(check("width=320&height=240&method=scale", thumbnail_type, (320, 160)).await, first);
        // Larger than any preset: made for the request, never larger than the original.
        check("width=900&height=700&method=scale", thumbnail_type, (900, 450)).await;
        check("width=700&height=700&method=crop", thumbnail_type, (500, 500)).await;
        // Larger than the original: the original itself.
        let (ct, dims, bytes) = thumbnail_of(&s, &alice, &mxc, "width=2000&height=2000&method=scale").await;
        assert_eq!((ct.as_str(), dims), (content_type, (1000, 500)), "{format:?}");
        assert_eq!(bytes, original, "{format:?}: the original is served unchanged");
    }

    // Bad requests.
    let mxc = upload(&s, &alice, image_bytes(ImageFormat::Png, 10, 10), "image/png", None).await;
    for query in ["width=0&height=10", "width=10&height=10&method=stretch", "width=-1&height=10", "height=10"]
    {
        let resp = thumbnail(&s, &alice, &mxc, query).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
    }
}

/// Every member's client asks for the thumbnail of a newly posted image at once: it is
/// decoded once, and everyone gets the same stored thumbnail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_a_new_thumbnail_decode_once() {
    let s = Arc::new(TestServer::start().await);
    let alice = new_user(&s, "alice").await;
    let mxc = upload(&s, &alice, image_bytes(ImageFormat::Jpeg, 2000, 1500), "image/jpeg", None).await;
    let before = s.services.media.thumbnails_made();
    let requests: Vec<_> = (0..12)
        .map(|_| {
            let (s, token, path) = (Arc::clone(&s), alice.token.clone(), media_path(&mxc).to_owned());
            tokio::spawn(async move {
                let resp = get(
                    &s,
                    &format!("{V1}/thumbnail/{path}?width=800&height=600&method=scale"),
                    Some(&token),
                )
                .await;
                assert_eq!(resp.status(), StatusCode::OK);
                resp.bytes().await.unwrap()
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for request in requests {
        bodies.push(request.await.unwrap());
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(image::load_from_memory(&bodies[0]).unwrap().width(), 800);
    assert_eq!(s.services.media.thumbnails_made() - before, 1, "the image was decoded more than once");
}

/// A WebP animation of `frames` solid frames, assembled from still lossless frames.
fn animated_webp(width: u32, height: u32, frames: usize) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, fourcc: &[u8], payload: &[u8]) {
        out.extend_from_slice(fourcc);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        if payload.len() % 2 == 1 {
            out.push(0);
        }
    }
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let mut body = Vec::new();
    let mut vp8x = vec![0x02, 0, 0, 0]; // animation flag
    vp8x.extend(u24(width - 1));
    vp8x.extend(u24(height - 1));
    chunk(&mut body, b"VP8X", &vp8x);
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    for i in 0..frames {
        let still = {
            let image = RgbaImage::from_pixel(width, height, Rgba([(i * 80) as u8, 0, 200, 255]));
            let mut out = Vec::new();
            DynamicImage::ImageRgba8(image).write_to(&mut Cursor::new(&mut out), ImageFormat::WebP).unwrap();
            out
        };
        // The still file is RIFF, size, WEBP, then its one VP8L chunk.
        assert_eq!(&still[12..16], b"VP8L");
        let mut frame = Vec::new();
        frame.extend(u24(0));
        frame.extend(u24(0));
        frame.extend(u24(width - 1));
        frame.extend(u24(height - 1));
        frame.extend(u24(100));
        frame.push(0);
        frame.extend_from_slice(&still[12..]);
        chunk(&mut body, b"ANMF", &frame);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend(body);
    out
}

fn animated_gif(width: u32, height: u32, frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = (0..frames).map(|i| {
            image::Frame::new(RgbaImage::from_pixel(width, height, Rgba([(i * 60) as u8, 100, 0, 255])))
        });
        encoder.encode_frames(frames).unwrap();
    }
    out
}

#[tokio::test]
async fn animated_images_are_passed_through_only_when_asked() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    for (original, content_type) in
        [(animated_gif(400, 300, 3), "image/gif"), (animated_webp(400, 300, 3), "image/webp")]
    {
        let mxc = upload(&s, &alice, original.clone(), content_type, None).await;
        // animated=true: the animation itself (it is small enough).
        let resp = thumbnail(&s, &alice, &mxc, "width=96&height=96&method=crop&animated=true").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header_of(&resp, "content-type"), content_type);
        assert_eq!(resp.bytes().await.unwrap(), original, "{content_type}");
        // Not asked for, or refused: a still thumbnail, even where the original would fit.
        for query in [
            "width=96&height=96&method=crop",
            "width=96&height=96&method=crop&animated=false",
            "width=800&height=600",
        ] {
            let (ct, dims, _) = thumbnail_of(&s, &alice, &mxc, query).await;
            assert_eq!(ct, "image/png", "{content_type} {query}");
            assert!(dims.0 <= 400 && dims.1 <= 300, "{content_type} {query}: {dims:?}");
        }
        let (_, dims, _) = thumbnail_of(&s, &alice, &mxc, "width=96&height=96&method=crop").await;
        assert_eq!(dims, (96, 96));
    }
    // A still image asked for with animated=true is thumbnailed as usual.
    let mxc = upload(&s, &alice, image_bytes(ImageFormat::Gif, 400, 300), "image/gif", None).await;
    let (ct, dims, _) = thumbnail_of(&s, &alice, &mxc, "width=96&height=96&method=crop&animated=true").await;
    assert_eq!((ct.as_str(), dims), ("image/png", (96, 96)));
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header claims `width × height` RGBA pixels, followed by a few bytes of data:
/// the shape of a decompression bomb, which would allocate the header's size to decode.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    out
}

#[tokio::test]
async fn corrupt_and_oversized_images_are_refused() {
    let s = TestServer::start_with(|c| c.max_image_pixels = 2_000_000).await;
    let alice = new_user(&s, "alice").await;
    let crop = "width=96&height=96&method=crop";

    // A header promising 10^10 pixels: refused from the header, nothing decoded.
    let mxc = upload(&s, &alice, png_claiming(100_000, 100_000), "image/png", None).await;
    expect_error(
        error_of(thumbnail(&s, &alice, &mxc, crop).await).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // A real image over the configured pixel limit (2000×2000 compresses to a few kilobytes).
    let big = {
        let mut out = Vec::new();
        DynamicImage::ImageLuma8(image::GrayImage::new(2000, 2000))
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    };
    assert!(big.len() < 100_000);
    let mxc = upload(&s, &alice, big, "image/png", None).await;
    expect_error(
        error_of(thumbnail(&s, &alice, &mxc, crop).await).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );

    // Truncated data behind a valid header, bytes that are no image, a text file.
    let mut truncated = image_bytes(ImageFormat::Png, 600, 400);
    truncated.truncate(truncated.len() / 2);
    let mut truncated_jpeg = image_bytes(ImageFormat::Jpeg, 600, 400);
    truncated_jpeg.truncate(600);
    for (bytes, content_type) in [
        (truncated, "image/png"),
        (truncated_jpeg, "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nnot really".to_vec(), "image/png"),
        (vec![0xAB; 5000], "image/png"),
        (b"just some text".to_vec(), "text/plain"),
        (png_claiming(0, 10), "image/png"),
    ] {
        let mxc = upload(&s, &alice, bytes, content_type, None).await;
        expect_error(
            error_of(thumbnail(&s, &alice, &mxc, crop).await).await,
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        );
    }
    // The server is unharmed.
    let mxc = upload(&s, &alice, image_bytes(ImageFormat::Png, 200, 200), "image/png", None).await;
    let (_, dims, _) = thumbnail_of(&s, &alice, &mxc, crop).await;
    assert_eq!(dims, (96, 96));
}

pub(crate) fn content_files(s: &TestServer) -> usize {
    fn count(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries.map(|e| e.unwrap().path()).map(|p| if p.is_dir() { count(&p) } else { 1 }).sum()
            })
            .unwrap_or(0)
    }
    count(&s.dir.path().join("db").join("media").join("content"))
}

#[tokio::test]
async fn equal_content_is_stored_once_and_retention_keeps_what_is_still_used() {
    let s = TestServer::start_with(|c| c.media_retention_days = Some(30)).await;
    let alice = new_user(&s, "alice").await;
    let png = image_bytes(ImageFormat::Png, 200, 100);
    let old = upload(&s, &alice, png.clone(), "image/png", Some("one.png")).await;
    let other = upload(&s, &alice, b"something else".to_vec(), "text/plain", None).await;
    let (_, _, _) = thumbnail_of(&s, &alice, &old, "width=32&height=32&method=crop").await;
    assert_eq!(content_files(&s), 3, "two uploads and a thumbnail");

    s.clock.advance_ms(20 * 24 * 3600 * 1000);
    let recent = upload(&s, &alice, png.clone(), "image/png", Some("two.png")).await;
    assert_ne!(old, recent);
    assert_eq!(content_files(&s), 3, "the same content is stored once");
    assert_eq!(s.services.media.apply_retention().await.unwrap().media, 0);

    // Past the retention of the first two uploads: they go, with the thumbnail; the content
    // the recent upload shares stays.
    s.clock.advance_ms(15 * 24 * 3600 * 1000);
    let report = s.services.media.apply_retention().await.unwrap();
    assert_eq!(report.media, 2);
    for mxc in [&old, &other] {
        let resp = get(&s, &format!("{V1}/download/{}", media_path(mxc)), Some(&alice.token)).await;
        expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    let resp = get(&s, &format!("{V1}/download/{}", media_path(&recent)), Some(&alice.token)).await;
    assert_eq!(resp.bytes().await.unwrap(), png);
    assert_eq!(content_files(&s), 1);
}

/// A web server for previews to fetch, on loopback; counts the page requests it serves.
struct PageServer {
    base: String,
    hits: Arc<AtomicUsize>,
    image: Vec<u8>,
}

async fn page_server() -> PageServer {
    use axum::{
        Router,
        response::{Html, Redirect},
        routing::get,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let image = {
        let mut out = Vec::new();
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(64, 48, Rgba([10, 20, 30, 255])))
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    };
    let page = r#"<!doctype html><html><head>
        <title>Fallback title</title>
        <meta name="description" content="A page about &quot;testing&quot;">
        <meta property="og:title" content="The Test Page">
        <meta property="og:image" content="/image.png">
        <meta property="og:image:width" content="9999">
        </head><body><p>hello</p></body></html>"#;
    let counter = Arc::clone(&hits);
    let served = image.clone();
    let filler = "x".repeat(4096);
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { Html(page) }
            }),
        )
        .route("/image.png", get(move || async move { ([(header::CONTENT_TYPE, "image/png")], served.clone()) }))
        .route("/redirect", get(|| async { Redirect::temporary("/page") }))
        .route("/loop", get(|| async { Redirect::temporary("/loop") }))
        .route("/to-internal", get(move || async move { Redirect::temporary(&format!("http://127.0.0.2:{port}/page")) }))
        .route("/plain", get(|| async { "just text" }))
        .route("/missing", get(|| async { (StatusCode::NOT_FOUND, "gone") }))
        .route(
            "/late-tags",
            get(move || {
                let filler = filler.clone();
                async move { Html(format!("<html><head><!-- {filler} --><meta property=\"og:title\" content=\"too far\"></head></html>")) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    PageServer { base: format!("http://127.0.0.1:{port}"), hits, image }
}

async fn preview(s: &TestServer, who: &Session, url: &str) -> (StatusCode, Value) {
    let resp = s
        .http
        .get(format!("{}{V1}/preview_url", s.base))
        .query(&[("url", url)])
        .bearer_auth(&who.token)
        .send()
        .await
        .unwrap();
    error_of(resp).await
}

#[tokio::test]
async fn url_previews_are_off_by_default() {
    let s = TestServer::start().await;
    let alice = new_user(&s, "alice").await;
    expect_error(preview(&s, &alice, "https://example.com/").await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn url_preview_of_a_page_on_an_allowed_address() {
    let pages = page_server().await;
    let s = TestServer::start_with(|c| {
        c.url_preview_enabled = true;
        c.url_preview_ip_range_whitelist = vec!["127.0.0.1/32".parse().unwrap()];
        c.url_preview_max_spider_size = 2048;
    })
    .await;
    let alice = new_user(&s, "alice").await;

    let (status, og) = preview(&s, &alice, &format!("{}/page", pages.base)).await;
    assert_eq!(status, StatusCode::OK, "{og}");
    assert_eq!(og["og:title"], "The Test Page");
    assert_eq!(og["og:description"], "A page about \"testing\"");
    // The image is fetched into the media store and described by what it really is.
    let mxc = og["og:image"].as_str().unwrap();
    assert!(mxc.starts_with("mxc://localhost/"), "{og}");
    assert_eq!((og["og:image:width"].as_u64(), og["og:image:height"].as_u64()), (Some(64), Some(48)), "{og}");
    assert_eq!(og["og:image:type"], "image/png");
    assert_eq!(og["matrix:image:size"].as_u64(), Some(pages.image.len() as u64));
    let resp = get(&s, &format!("{V1}/download/{}", media_path(mxc)), Some(&alice.token)).await;
    assert_eq!(resp.bytes().await.unwrap(), pages.image);
    assert_eq!(pages.hits.load(Ordering::SeqCst), 1);

    // Cached: asked again (by anyone, on either path), the page is not fetched again.
    let bob = new_user(&s, "bob").await;
    let (_, again) = preview(&s, &bob, &format!("{}/page#section", pages.base)).await;
    assert_eq!(again, og);
    let (status, legacy) =
        s.get(&format!("{LEGACY}/preview_url?url={}/page", pages.base), Some(&bob.token)).await;
    assert_eq!((status, legacy), (StatusCode::OK, og.clone()));
    assert_eq!(pages.hits.load(Ordering::SeqCst), 1);
    // After an hour it is fetched again.
    s.clock.advance_ms(3600 * 1000 + 1);
    preview(&s, &bob, &format!("{}/page", pages.base)).await;
    assert_eq!(pages.hits.load(Ordering::SeqCst), 2);

    // Redirects are followed; an image URL previews as the image; other content as nothing.
    let (status, og) = preview(&s, &alice, &format!("{}/redirect", pages.base)).await;
    assert_eq!((status, og["og:title"].as_str()), (StatusCode::OK, Some("The Test Page")));
    let (status, og) = preview(&s, &alice, &format!("{}/image.png", pages.base)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(og["og:image:width"].as_u64(), Some(64), "{og}");
    let (status, og) = preview(&s, &alice, &format!("{}/plain", pages.base)).await;
    assert_eq!((status, og), (StatusCode::OK, serde_json::json!({})));
    // Bytes past the size limit are not read.
    let (status, og) = preview(&s, &alice, &format!("{}/late-tags", pages.base)).await;
    assert_eq!((status, og), (StatusCode::OK, serde_json::json!({})));
    // Failures upstream are 502s.
    expect_error(
        preview(&s, &alice, &format!("{}/missing", pages.base)).await,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
    );
    expect_error(
        preview(&s, &alice, &format!("{}/loop", pages.base)).await,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
    );
    // Every hop is checked: a redirect to a loopback address outside the allowed range is
    // refused.
    expect_error(
        preview(&s, &alice, &format!("{}/to-internal", pages.base)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // The allowed range covers only its addresses.
    let port = pages.base.rsplit(':').next().unwrap();
    expect_error(
        preview(&s, &alice, &format!("http://[::1]:{port}/page")).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn url_preview_guard_refuses_internal_targets_by_default() {
    let pages = page_server().await;
    let s = TestServer::start_with(|c| {
        c.url_preview_enabled = true;
        c.url_preview_domain_blacklist = vec!["*.blocked.example".into()];
        c.url_preview_timeout_secs = 5;
    })
    .await;
    let alice = new_user(&s, "alice").await;
    let port = pages.base.rsplit(':').next().unwrap();
    for url in [
        format!("{}/page", pages.base),
        format!("http://localhost:{port}/page"),
        format!("http://[::1]:{port}/page"),
        format!("http://[::ffff:127.0.0.1]:{port}/page"),
        format!("http://127.1:{port}/page"),
        format!("http://2130706433:{port}/page"),
        "http://10.1.2.3/".to_owned(),
        "http://192.168.0.1/".to_owned(),
        "http://172.20.0.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://0.0.0.0/".to_owned(),
        "http://[fd00::1]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "https://www.blocked.example/".to_owned(),
    ] {
        let result = preview(&s, &alice, &url).await;
        expect_error(result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    assert_eq!(pages.hits.load(Ordering::SeqCst), 0, "no request reached the page server");
    for url in ["ftp://example.com/file", "file:///etc/passwd", "not a url", "javascript:alert(1)"] {
        let (status, body) = preview(&s, &alice, url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
    }
}
