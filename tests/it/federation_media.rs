//! Media across servers: another server's `mxc://` fetched over federation on first request,
//! kept, thumbnailed here, and served from the copy once its server is down; this server's
//! media served to other servers as the spec's `multipart/mixed` answers, to signed requests
//! only.

use conduit::service::clock::Clock as _;
use image::ImageFormat;
use reqwest::{StatusCode, header};
use serde_json::Value;

use crate::{
    federation_rooms::{TwoServers, signed_send, two_servers},
    harness::{Session, TestServer, expect_error},
    media::{content_files, image_bytes, upload},
};

const V1: &str = "/_matrix/client/v1/media";
const LEGACY: &str = "/_matrix/media/v3";

async fn get(s: &TestServer, who: &Session, path: &str) -> reqwest::Response {
    s.http.get(format!("{}{path}", s.base)).bearer_auth(&who.token).send().await.unwrap()
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn header_of(resp: &reqwest::Response, name: header::HeaderName) -> String {
    resp.headers().get(&name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn another_servers_media_is_fetched_once_kept_thumbnailed_and_served_while_it_is_down() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let png = image_bytes(ImageFormat::Png, 640, 480);
    let mxc = upload(&a, &alice, png.clone(), "image/png", Some("holiday.png")).await;
    let path = mxc.strip_prefix("mxc://").unwrap().to_owned();
    let (server, media_id) = path.split_once('/').unwrap();
    assert_eq!(server, a.name());

    // Not yet fetched: the legacy endpoint's allow_remote=false does not fetch it.
    let resp = get(&b, &bob, &format!("{LEGACY}/download/{path}?allow_remote=false")).await;
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    // Bob's download on B fetches it from A: the same bytes, type and name.
    let resp = get(&b, &bob, &format!("{V1}/download/{path}")).await;
    if resp.status() != StatusCode::OK {
        panic!("the first download on B: {:?}", error_of(resp).await);
    }
    assert_eq!(header_of(&resp, header::CONTENT_TYPE), "image/png");
    assert!(header_of(&resp, header::CONTENT_DISPOSITION).contains("holiday.png"), "{resp:?}");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice());
    let server_name: ruma::OwnedServerName = server.try_into().unwrap();
    let kept = b.services.media.remote_record(&server_name, media_id).unwrap().expect("kept on B");
    assert_eq!(kept.size, png.len() as u64);

    // A thumbnail is made on B from its copy, as A makes it of the original.
    let thumbnail = format!("{V1}/thumbnail/{path}?width=64&height=64&method=scale");
    let size = |bytes: &[u8]| {
        let image = image::load_from_memory(bytes).unwrap();
        (image.width(), image.height())
    };
    let resp = get(&b, &bob, &thumbnail).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let on_b = size(&resp.bytes().await.unwrap());
    let on_a = size(&get(&a, &alice, &thumbnail).await.bytes().await.unwrap());
    assert_eq!(on_b, on_a);
    assert!(on_b.0 < 640, "{on_b:?} is no thumbnail");

    // With A down, B still serves its copy, through every endpoint; media it never fetched
    // from A cannot be had.
    let _a_dir = a.stop().await;
    for endpoint in [format!("{V1}/download/{path}"), format!("{LEGACY}/download/{path}?allow_remote=false")]
    {
        let resp = get(&b, &bob, &endpoint).await;
        assert_eq!(resp.status(), StatusCode::OK, "{endpoint}");
        assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice(), "{endpoint}");
    }
    let resp = get(&b, &bob, &format!("{V1}/download/{server}/NeverUploadedHere")).await;
    let (status, body) = error_of(resp).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");

    // An admin purges B's copies fetched before now: gone, with their thumbnail, and with A
    // down they cannot be fetched again.
    b.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = b.login("root", "pw-root-12345", None).await;
    assert!(content_files(&b) >= 1);
    let (status, purged) = b
        .post(
            &format!("/_synapse/admin/v1/purge_media_cache?before_ts={}", b.clock.now_ms() + 1),
            Some(&root.token),
            serde_json::json!({}),
        )
        .await;
    assert_eq!((status, purged), (StatusCode::OK, serde_json::json!({"deleted": 1})));
    assert!(b.services.media.remote_record(&server_name, media_id).unwrap().is_none());
    assert_eq!(content_files(&b), 0, "B keeps no media of its own");
    let resp = get(&b, &bob, &format!("{V1}/download/{path}")).await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn unknown_media_of_another_server_is_not_found_and_nothing_is_kept() {
    let TwoServers { pki: _pki, a, b, alice: _, bob } = two_servers().await;
    let resp = get(&b, &bob, &format!("{V1}/download/{}/NoSuchMediaItem", a.name())).await;
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let server_name: ruma::OwnedServerName = a.name().try_into().unwrap();
    assert!(b.services.media.remote_record(&server_name, "NoSuchMediaItem").unwrap().is_none());
}

/// A part of a `multipart/mixed` body: its headers (lower-cased names) and bytes.
type Part = (Vec<(String, String)>, Vec<u8>);

/// The parts of a `multipart/mixed` body.
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = content_type.split("boundary=").nth(1).expect("a boundary").trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut out = Vec::new();
    let find = |from: usize, needle: &[u8]| {
        text[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    };
    let mut at = find(0, delimiter.as_bytes()).expect("an opening delimiter") + delimiter.len();
    loop {
        if text[at..].starts_with(b"--") {
            return out;
        }
        at += 2; // CRLF after the delimiter
        let headers_end = find(at, b"\r\n\r\n").expect("a part's headers");
        let headers = String::from_utf8(text[at..headers_end].to_vec())
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned())))
            .collect();
        let content_start = headers_end + 4;
        let next = find(content_start, format!("\r\n{delimiter}").as_bytes()).expect("a closing delimiter");
        out.push((headers, text[content_start..next].to_vec()));
        at = next + 2 + delimiter.len();
    }
}

#[tokio::test]
async fn this_servers_media_is_served_to_other_servers_as_multipart_to_signed_requests_only() {
    let TwoServers { pki, a, b, alice, bob: _ } = two_servers().await;
    let text = b"minutes of the meeting".to_vec();
    let mxc = upload(&a, &alice, text.clone(), "text/plain", Some("minutes.txt")).await;
    let media_id = mxc.rsplit('/').next().unwrap().to_owned();
    let download = format!("/_matrix/federation/v1/media/download/{media_id}");

    let resp = signed_send(&pki, &a, &b, "GET", &download, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = header_of(&resp, header::CONTENT_TYPE);
    assert!(content_type.starts_with("multipart/mixed; boundary="), "{content_type}");
    let body = resp.bytes().await.unwrap();
    let got = multipart_parts(&content_type, &body);
    assert_eq!(got.len(), 2, "{}", String::from_utf8_lossy(&body));
    let (meta_headers, meta) = &got[0];
    assert!(meta_headers.contains(&("content-type".to_owned(), "application/json".to_owned())));
    assert_eq!(serde_json::from_slice::<Value>(meta).unwrap(), serde_json::json!({}));
    let (headers, content) = &got[1];
    assert!(headers.iter().any(|(k, v)| k == "content-type" && v.starts_with("text/plain")), "{headers:?}");
    assert!(
        headers.iter().any(|(k, v)| k == "content-disposition" && v.contains("minutes.txt")),
        "{headers:?}"
    );
    assert_eq!(content, &text);

    // A thumbnail of an image, the same way.
    let png = image_bytes(ImageFormat::Png, 300, 200);
    let mxc = upload(&a, &alice, png, "image/png", None).await;
    let image_id = mxc.rsplit('/').next().unwrap();
    let resp = signed_send(
        &pki,
        &a,
        &b,
        "GET",
        &format!("/_matrix/federation/v1/media/thumbnail/{image_id}?width=32&height=32&method=crop"),
        None,
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = header_of(&resp, header::CONTENT_TYPE);
    let body = resp.bytes().await.unwrap();
    let got = multipart_parts(&content_type, &body);
    let thumb = image::load_from_memory(&got[1].1).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 32));

    // Unknown media is 404; an unsigned request is refused.
    let resp =
        signed_send(&pki, &a, &b, "GET", "/_matrix/federation/v1/media/download/NoSuchItem", None).await;
    expect_error(error_of(resp).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let resp = pki.client().get(format!("{}{download}", a.federation_base())).send().await.unwrap();
    expect_error(error_of(resp).await, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
}

/// Another server's media answer may point elsewhere (`Location` in its second part); a
/// literal internal address there is refused by the address guard before any connection,
/// as a name resolving inside is.
#[tokio::test]
async fn a_media_location_at_an_internal_address_is_refused_by_the_guard() {
    use axum::response::IntoResponse;

    use crate::{
        fake_peer::{FakePeer, answer},
        harness::Pki,
    };

    let pki = Pki::new();
    let peer = FakePeer::start(&pki, |_, path, _| async move {
        if !path.starts_with("/_matrix/federation/v1/media/download/") {
            return answer(
                StatusCode::NOT_FOUND,
                serde_json::json!({"errcode": "M_NOT_FOUND", "error": "none"}),
            );
        }
        let body = "--b0undary\r\nContent-Type: application/json\r\n\r\n{}\r\n\
                    --b0undary\r\nLocation: https://10.255.255.1/secret\r\n\r\n\r\n--b0undary--\r\n";
        (StatusCode::OK, [(header::CONTENT_TYPE, "multipart/mixed; boundary=b0undary")], body).into_response()
    })
    .await;
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let (status, body) =
        error_of(get(&a, &alice, &format!("{V1}/download/{}/somefile", peer.name)).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("https://10.255.255.1/secret is refused") && error.contains("not a public address"),
        "{body}"
    );
}
