//! `/metrics` on a metrics listener: the exposition parses with the Prometheus project's
//! OpenMetrics parser (Python `prometheus-client`, which `scripts/test` installs in the
//! Python it names in `CONDUIT_TEST_PYTHON`; a run without it fails), and its counters and
//! gauges move with traffic.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use conduit::config::{ListenerConfig, ListenerResource};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, expect_error},
    sdk::{provided_by_scripts_test, script},
};

/// The samples of an exposition, as the parser read them, and its families' names.
struct Samples(Vec<Value>, Vec<String>);

impl Samples {
    /// The value of the sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .and_then(|s| s["value"].as_f64())
    }

    fn expect(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }
}

async fn scrape(url: &str) -> Samples {
    let response = reqwest::get(format!("{url}/metrics")).await.expect("scraped");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.unwrap();
    let python = provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with prometheus-client");
    let mut child = Command::new(python)
        .arg(script("metrics/parse.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("parser output");
    let families =
        parsed["families"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap().to_owned());
    Samples(parsed["samples"].as_array().unwrap().clone(), families.collect())
}

fn listener(resources: &[ListenerResource]) -> ListenerConfig {
    ListenerConfig::plain("127.0.0.1".parse().unwrap(), 0, resources)
}

const SEND_ROUTE: &str = "/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn_id}";

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    use ListenerResource::*;
    let s =
        TestServer::start_listening(|c| c.listeners = vec![listener(&[Client]), listener(&[Metrics])]).await;
    let metrics_url = s.listener_serving(Metrics).to_owned();
    expect_error(s.get("/metrics", None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");

    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) = s.post("/_matrix/client/v3/createRoom", Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    let send = |i: usize| {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}");
        (path, json!({"msgtype": "m.text", "body": format!("hello {i}")}))
    };
    let (path, body) = send(0);
    assert_eq!(s.put(&path, Some(&alice.token), body).await.0, StatusCode::OK);

    let before = scrape(&metrics_url).await;
    let labels = [("method", "PUT"), ("route", SEND_ROUTE), ("status", "200")];
    assert_eq!(before.expect("conduit_http_requests_total", &labels), 1.0);
    let committed_before = before.expect("conduit_stream_position", &[("kind", "committed")]);

    for i in 1..=5 {
        let (path, body) = send(i);
        assert_eq!(s.put(&path, Some(&alice.token), body).await.0, StatusCode::OK);
    }
    // A long-poll waiting while the scrape is taken.
    let (status, body) = s.get("/_matrix/client/v3/sync", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let poll = {
        let (http, url, token) = (s.http.clone(), s.base.clone(), alice.token.clone());
        tokio::spawn(async move {
            http.get(format!("{url}/_matrix/client/v3/sync?since={since}&timeout=5000"))
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let mut after = scrape(&metrics_url).await;
    for _ in 0..50 {
        if after.expect("conduit_long_polls_waiting", &[]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = scrape(&metrics_url).await;
    }
    assert!(after.expect("conduit_long_polls_waiting", &[]) >= 1.0);
    assert!(after.expect("conduit_http_requests_in_flight", &[]) >= 1.0);

    // Requests by route template (never the raw path), and their latency.
    assert_eq!(after.expect("conduit_http_requests_total", &labels), 6.0);
    let routes: Vec<&str> = after
        .0
        .iter()
        .filter(|s| s["name"] == "conduit_http_requests_total")
        .map(|s| s["labels"]["route"].as_str().unwrap())
        .collect();
    assert!(routes.len() >= 4 && routes.iter().all(|r| !r.contains('!')), "{routes:?}");
    let route = [("method", "PUT"), ("route", SEND_ROUTE)];
    assert_eq!(after.expect("conduit_http_request_duration_seconds_count", &route), 6.0);
    assert_eq!(
        after.expect("conduit_http_request_duration_seconds_bucket", &[route[0], route[1], ("le", "+Inf")]),
        6.0
    );
    // Stream positions rose with the sends; nothing is in flight once they returned.
    assert!(after.expect("conduit_stream_position", &[("kind", "committed")]) >= committed_before + 5.0);
    assert!(after.expect("conduit_stream_position", &[("kind", "reserved")]) >= committed_before + 5.0);
    assert!(after.value("conduit_stream_lag", &[]).is_some());
    // Each send waited for a group commit on RocksDB; on PostgreSQL an event's write is a
    // synchronous commit of its own (`KvStore::prefers_synced_writes`), with no group.
    if !crate::harness::on_postgresql() {
        assert!(after.expect("conduit_group_commit_batch_size_count", &[]) >= 6.0);
        assert!(after.expect("conduit_group_commit_batch_size_sum", &[]) >= 6.0);
    }
    // Storage, caches, process, connections, build.
    // RocksDB estimates each table's keys; PostgreSQL's tables have no such estimate here.
    if !crate::harness::on_postgresql() {
        assert!(after.expect("conduit_rocksdb_estimated_keys", &[("table", "pdus")]) >= 1.0);
    }
    // Buffered and made durable by group commit on RocksDB; synced one by one on PostgreSQL.
    let writes = after.expect("conduit_rocksdb_writes_total", &[("kind", "buffered")])
        + after.expect("conduit_rocksdb_writes_total", &[("kind", "synced")]);
    assert!(writes >= 6.0);
    assert!(
        after.expect("conduit_rocksdb_reads_total", &[("op", "get")])
            > before.expect("conduit_rocksdb_reads_total", &[("op", "get")])
    );
    assert!(after.value("conduit_cache_hits_total", &[("cache", "events")]).is_some());
    assert!(after.value("conduit_cache_misses_total", &[("cache", "state_groups")]).is_some());
    assert!(after.expect("process_resident_memory_bytes", &[]) > 1_000_000.0);
    assert!(after.expect("process_cpu_seconds_total", &[]) > 0.0);
    assert!(after.expect("process_open_fds", &[]) >= 3.0);
    assert!(after.expect("process_max_fds", &[]) >= after.expect("process_open_fds", &[]));
    assert!(after.expect("conduit_connections_open", &[]) >= 1.0);
    assert!(after.expect("conduit_connections_accepted_total", &[]) >= 1.0);
    assert_eq!(after.expect("conduit_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);

    // Every metric the Grafana dashboard queries is exposed (as a sample or a family).
    let dashboard = include_str!("../../docs/grafana/conduit-dashboard.json");
    let mut queried: Vec<&str> = Vec::new();
    for (at, _) in dashboard.match_indices("conduit_").chain(dashboard.match_indices("process_")) {
        let name = &dashboard[at..];
        let end = name.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(name.len());
        queried.push(&name[..end]);
    }
    queried.sort_unstable();
    queried.dedup();
    let known = |name: &str| {
        after.0.iter().any(|s| s["name"] == name)
            || after.1.iter().any(|family| {
                [name, name.trim_end_matches("_total"), name.trim_end_matches("_bucket")]
                    .contains(&family.as_str())
            })
    };
    let unknown: Vec<&&str> = queried.iter().filter(|name| !known(name)).collect();
    assert!(queried.len() > 15 && unknown.is_empty(), "the dashboard queries unknown metrics: {unknown:?}");

    // The long-poll ends when the server stops waiting for it (a message wakes it).
    let (path, body) = send(99);
    assert_eq!(s.put(&path, Some(&alice.token), body).await.0, StatusCode::OK);
    assert_eq!(poll.await.unwrap().unwrap(), StatusCode::OK);
}

/// The value of the sample `name` (without labels) in the raw exposition.
async fn raw_sample(url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Every minute of the server's clock the allocator is asked to give its free memory back,
/// and the metrics count it (with the resident bytes that went).
#[tokio::test]
async fn free_memory_is_given_back_every_minute_of_the_servers_clock() {
    use ListenerResource::*;
    let s =
        TestServer::start_listening(|c| c.listeners = vec![listener(&[Client]), listener(&[Metrics])]).await;
    let url = s.listener_serving(Metrics).to_owned();
    let scraped = scrape(&url).await;
    assert_eq!(scraped.expect("conduit_memory_trims_total", &[]), 0.0);
    assert_eq!(scraped.expect("conduit_memory_released_bytes_total", &[]), 0.0);
    for round in 1..=2 {
        s.clock.advance_ms(conduit::service::memory::TRIM_EVERY_MS);
        let mut trims = 0.0;
        for _ in 0..200 {
            trims = raw_sample(&url, "conduit_memory_trims_total").await.unwrap_or_default();
            if trims >= f64::from(round) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(trims, f64::from(round), "trims after {round} minute(s) of the server's clock");
    }
    // Not a minute more: no third.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(raw_sample(&url, "conduit_memory_trims_total").await, Some(2.0));
    assert!(raw_sample(&url, "conduit_memory_released_bytes_total").await.is_some());
}
