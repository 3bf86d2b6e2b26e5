//! Listeners, TLS and connection hardening, over real sockets: what each listener serves,
//! HTTPS with a certificate reloaded while the server runs, the header, body and idle
//! timeouts (configured short: sockets cannot use the manual clock) that never cut off a
//! long-poll, the connection cap, and sockets passed by systemd socket activation.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use conduit::config::{ConfigDuration, ListenerConfig, ListenerResource};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::harness::{TestServer, expect_error};

fn listener(resources: &[ListenerResource]) -> ListenerConfig {
    ListenerConfig::plain("127.0.0.1".parse().unwrap(), 0, resources)
}

async fn get(url: &str) -> (StatusCode, Value) {
    let response = reqwest::get(url).await.expect("request sent");
    let status = response.status();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null))
}

fn addr_of(base: &str) -> SocketAddr {
    base.rsplit("://").next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_media_listener_serves_only_the_media_endpoints() {
    use ListenerResource::*;
    let s =
        TestServer::start_listening(|c| c.listeners = vec![listener(&[Client]), listener(&[Media])]).await;
    let media = s.listener_serving(Media).to_owned();
    // Routed (the media endpoints ask for a token), where the client API is not served.
    for path in ["/_matrix/client/v1/media/config", "/_matrix/media/v3/config"] {
        expect_error(get(&format!("{media}{path}")).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    }
    expect_error(
        get(&format!("{media}/_matrix/client/versions")).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );
    // `client` includes media.
    let client = s.listener_serving(Client).to_owned();
    expect_error(
        get(&format!("{client}/_matrix/client/v1/media/config")).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn each_listener_serves_only_its_resources() {
    use ListenerResource::*;
    let s =
        TestServer::start_listening(|c| c.listeners = vec![listener(&[Client]), listener(&[Metrics])]).await;
    let client = s.listener_serving(Client).to_owned();
    let metrics = s.listener_serving(Metrics).to_owned();
    assert_ne!(client, metrics);

    let (status, body) = get(&format!("{client}/_matrix/client/versions")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_error(get(&format!("{client}/metrics")).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    // Federation is not among the client listener's resources.
    expect_error(
        get(&format!("{client}/_matrix/federation/v1/openid/userinfo?access_token=x")).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );

    let response = reqwest::get(format!("{metrics}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.text().await.unwrap().contains("conduit_build_info"));
    expect_error(
        get(&format!("{metrics}/_matrix/client/versions")).await,
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
    );

    // Without `[[global.listeners]]`, `address`/`port` give one client+federation listener,
    // which does not serve metrics.
    let plain = TestServer::start().await;
    let (status, _) = get(&format!("{}/_matrix/client/versions", plain.base)).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(get(&format!("{}/metrics", plain.base)).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
}

#[tokio::test]
async fn every_listener_answers_the_health_checks() {
    use ListenerResource::*;
    let s =
        TestServer::start_listening(|c| c.listeners = vec![listener(&[Client]), listener(&[Metrics])]).await;
    for base in [s.listener_serving(Client).to_owned(), s.listener_serving(Metrics).to_owned()] {
        let response = reqwest::get(format!("{base}/health")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.text().await.unwrap(), "OK");
        let (status, body) = get(&format!("{base}/_conduit/ready")).await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"status": "ready"})));
    }
    // Only GET.
    let response = reqwest::Client::new().post(format!("{}/_conduit/ready", s.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// A self-signed certificate for `localhost` and its key, as PEM, and the certificate DER.
fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The certificate a fresh connection to `url` is shown, through a client trusting `roots`.
async fn served_certificate(url: &str, roots: &[&str]) -> Result<Vec<u8>, String> {
    let mut builder = reqwest::Client::builder().tls_info(true).pool_max_idle_per_host(0);
    for root in roots {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap());
    }
    let client = builder.build().unwrap();
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    assert_eq!(response.status(), StatusCode::OK);
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info").clone();
    let body: Value = response.json().await.unwrap();
    assert!(body["versions"].is_array(), "{body}");
    Ok(info.peer_certificate().expect("a peer certificate").to_vec())
}

#[tokio::test]
async fn a_tls_listener_serves_https_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (first_pem, first_key, first_der) = self_signed("first");
    std::fs::write(&cert_path, &first_pem).unwrap();
    std::fs::write(&key_path, &first_key).unwrap();
    let mut tls_listener = listener(&[ListenerResource::Client]);
    tls_listener.tls_certificate_path = Some(cert_path.clone());
    tls_listener.tls_private_key_path = Some(key_path.clone());
    let s = TestServer::start_listening(|c| c.listeners = vec![tls_listener]).await;
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let url = format!("https://localhost:{}/_matrix/client/versions", addr_of(&s.base).port());

    let (second_pem, second_key, second_der) = self_signed("second");
    let roots = [first_pem.as_str(), second_pem.as_str()];
    assert_eq!(served_certificate(&url, &roots).await.unwrap(), first_der);
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::get(format!("http://{}/_matrix/client/versions", addr_of(&s.base))).await;
    assert!(plain.is_err(), "{plain:?}");

    // Bad files: the reload fails, says why, and the old certificate stays.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    let error = s.tls.reload().unwrap_err().to_string();
    assert!(error.contains("cert.pem"), "{error}");
    std::fs::write(&cert_path, &second_pem).unwrap();
    let error = s.tls.reload().unwrap_err().to_string();
    assert!(error.contains("does not belong"), "{error}");
    assert_eq!(served_certificate(&url, &roots).await.unwrap(), first_der);

    // Good files: new connections see the new certificate.
    std::fs::write(&key_path, &second_key).unwrap();
    assert_eq!(s.tls.reload().unwrap(), 1);
    assert_eq!(served_certificate(&url, &roots).await.unwrap(), second_der);
    // A client trusting only the old one is refused now.
    assert!(served_certificate(&url, &[first_pem.as_str()]).await.is_err());
}

/// Short timeouts: a head within 500 ms, body stalls under 500 ms, idle under 700 ms.
async fn hardened(max_connections: u32) -> TestServer {
    TestServer::start_with(|c| {
        c.request_header_timeout = ConfigDuration::from_millis(500);
        c.request_body_timeout = ConfigDuration::from_millis(500);
        c.keep_alive_timeout = ConfigDuration::from_millis(700);
        c.max_connections = max_connections;
    })
    .await
}

/// Read until the server closes the connection (or 5 s pass); answers what was read and
/// when the close came.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("still open after 5 s; read so far: {}", String::from_utf8_lossy(&seen)),
        }
    }
    (String::from_utf8_lossy(&seen).into_owned(), started.elapsed())
}

#[tokio::test]
async fn half_a_request_head_is_closed_after_the_header_timeout() {
    let s = hardened(100).await;
    let mut stream = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    stream.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n").await.unwrap();
    let (answer, after) = read_until_closed(&mut stream).await;
    assert!(answer.is_empty(), "{answer}");
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(3), "{after:?}");
    // A connection that sends nothing at all is closed as soon.
    let mut silent = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    let (_, after) = read_until_closed(&mut silent).await;
    assert!(after < Duration::from_secs(3), "{after:?}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_closed() {
    let s = hardened(100).await;
    let mut stream = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    stream
        .write_all(
            b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"type\": \"m.login",
        )
        .await
        .unwrap();
    let (answer, after) = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("M_UNKNOWN"), "{answer}");
    assert!(after >= Duration::from_millis(350) && after < Duration::from_secs(3), "{after:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = hardened(100).await;
    let mut stream = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    stream.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Nothing more: the idle timeout (700 ms) closes it.
    let (rest, after) = read_until_closed(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
    assert!(after >= Duration::from_millis(550) && after < Duration::from_secs(3), "{after:?}");
}

#[tokio::test]
async fn a_long_poll_outlives_every_timeout() {
    let s = hardened(100).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) = s.get("/_matrix/client/v3/sync", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    // 2.5 s of waiting: five header timeouts, five body timeouts, three idle timeouts.
    let started = Instant::now();
    let (status, body) =
        s.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=2500"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(2400), "{:?}", started.elapsed());
    // Then the same client goes on (its pooled connection was closed meanwhile or not).
    let (status, _) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once() {
    let s = TestServer::start_with(|c| c.max_connections = 3).await;
    let addr = addr_of(&s.base);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // The fourth is accepted and closed without an answer.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let _ = fourth.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (answer, after) = read_until_closed(&mut fourth).await;
    assert!(answer.is_empty() && after < Duration::from_secs(1), "{answer} {after:?}");
    assert_eq!(s.services.config.max_connections, 3);

    // Once one closes, a new one is served.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let mut buf = vec![0u8; 8192];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
            && String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "no connection was served after one closed");
}

/// The binary serves a socket passed as systemd passes it: descriptor 3, `LISTEN_FDS=1` and
/// `LISTEN_PID` naming the process (the shell `exec`s the binary, which keeps its pid).
#[tokio::test]
async fn a_socket_passed_by_socket_activation_is_served() {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};

    let dir = tempfile::tempdir().unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    let fd = socket.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("CONDUIT_DATABASE_PATH", dir.path().join("db"))
        .env("CONDUIT_LOG", "warn")
        .arg("-c")
        .arg("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" serve")
        .arg(env!("CARGO_BIN_EXE_conduit"));
    // SAFETY: dup2 and fcntl are async-signal-safe; the child only moves the descriptor to 3
    // and lets it survive exec.
    unsafe {
        command.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("sh runs");
    drop(socket);
    let url = format!("http://127.0.0.1:{port}/_matrix/client/versions");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(response) = client.get(&url).send().await {
            answered = Some(response.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answered, Some(StatusCode::OK));
}
