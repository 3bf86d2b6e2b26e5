//! The HTTP edge: unknown routes, bad bodies, size limits, CORS, persistence.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, expect_error, test_config};

#[tokio::test]
async fn unknown_endpoints_and_methods_are_unrecognized() {
    let s = TestServer::start().await;
    expect_error(
        s.get("/_matrix/client/v3/nonexistent", None).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    expect_error(s.get("/", None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    expect_error(
        s.call(Method::DELETE, "/_matrix/client/v3/login", None, None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
    );
}

#[tokio::test]
async fn an_empty_body_reads_as_an_empty_object() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (_, created) =
        s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({"preset": "public_chat"})).await;
    let room = created["room_id"].as_str().unwrap();
    // matrix-nio joins with no body at all.
    let resp = s
        .http
        .post(format!("{}/_matrix/client/v3/join/{room}", s.base))
        .bearer_auth(&bob.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Required fields are still required.
    let resp = s.http.post(format!("{}/_matrix/client/v3/login", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["errcode"], "M_BAD_JSON");
}

#[tokio::test]
async fn malformed_bodies_get_json_errors() {
    let s = TestServer::start().await;
    let resp =
        s.http.post(format!("{}/_matrix/client/v3/login", s.base)).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["errcode"], "M_NOT_JSON");
    expect_error(
        s.post("/_matrix/client/v3/register", None, json!([1, 2])).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    expect_error(
        s.post("/_matrix/client/v3/register", None, json!({"username": 7})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_too_large() {
    let s = TestServer::start_with(|c| c.max_request_size = 2048).await;
    let big = json!({"username": "x".repeat(4096), "password": "pw"});
    expect_error(
        s.post("/_matrix/client/v3/register", None, big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // Without a Content-Length (chunked), the limit still holds while the body streams in.
    let reply = raw_chunked_post(&s.base, "/_matrix/client/v3/register", 4096).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("M_TOO_LARGE"), "{reply}");
    // Under the limit is fine.
    assert_eq!(s.get("/_matrix/client/versions", None).await.0, StatusCode::OK);
}

/// POST `total` bytes of spaces with chunked transfer encoding; returns the raw response.
async fn raw_chunked_post(base: &str, path: &str, total: usize) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").to_owned();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        for _ in 0..total / 256 {
            // The server may answer and close before everything is sent.
            if stream.write_all(format!("100\r\n{}\r\n", " ".repeat(256)).as_bytes()).is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cors_preflight_and_headers_for_browsers() {
    let s = TestServer::start().await;
    let resp = s
        .http
        .request(Method::OPTIONS, format!("{}/_matrix/client/v3/login", s.base))
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_lowercase();
    for wanted in ["authorization", "content-type", "x-requested-with"] {
        assert!(headers.contains(wanted), "{headers}");
    }
    // Ordinary responses, errors included, carry the origin header too.
    let resp = s
        .http
        .get(format!("{}/_matrix/client/v3/nonexistent", s.base))
        .header("Origin", "https://x.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn accounts_survive_a_restart_on_the_same_database() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let dir = s.stop().await;
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await.0, StatusCode::OK);
    s.login("alice", "pw-alice-123", None).await;
}
