//! The scale-out layout end to end, with real processes: three `conduit` binaries sharing one
//! PostgreSQL database (`multi_process`) behind HAProxy (Debian's), as docs/scale-out.md
//! describes. Real SDK clients talk to HAProxy, which balances every request round robin, so
//! one client's requests land on all three processes; one process is killed with SIGKILL
//! under a send load, and the load and the clients carry on through the other two.

use std::{
    collections::{BTreeMap, HashSet},
    io::{Read, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use conduit::storage::pg_cluster::PgCluster;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Relay, free_port, shared_cluster},
    sdk::{provided_by_scripts_test, run_client_check, script},
};

const V3: &str = "/_matrix/client/v3";
const HAPROXY: &str = "/usr/sbin/haproxy";

/// A child process killed when dropped (a failing test must not leave servers running).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three conduit processes on one database and HAProxy in front of them.
struct Deployment {
    dir: tempfile::TempDir,
    /// Per process: its port and the running binary (`None` once killed).
    processes: Vec<(u16, Option<Reaped>)>,
    _haproxy: Reaped,
    /// HAProxy's address: what clients are given.
    base: String,
    stats_socket: PathBuf,
    http: reqwest::Client,
    /// Per process: the URL it reaches the database at, and its metrics listener's port.
    database_urls: Vec<String>,
    metrics_ports: Vec<u16>,
}

impl Deployment {
    /// `count` processes on a database of their own in the shared cluster.
    async fn start(count: usize) -> Self {
        let url = shared_cluster()
            .create_database(&format!("scale_out_{}", free_port()))
            .expect("a database for the deployment");
        Self::start_on(vec![url; count]).await
    }

    /// One process per URL, each reaching the database at its own.
    async fn start_on(database_urls: Vec<String>) -> Self {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: scripts/test installs Debian's haproxy for this test"
        );
        let count = database_urls.len();
        let dir = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let mut processes = Vec::new();
        let mut metrics_ports = Vec::new();
        for (index, url) in database_urls.iter().enumerate() {
            let (port, metrics) = (free_port(), free_port());
            let child = spawn_conduit(dir.path(), index, (port, metrics), url);
            processes.push((port, Some(child)));
            metrics_ports.push(metrics);
        }
        for (index, (port, _)) in processes.iter().enumerate() {
            wait_until_ready(&http, *port, &dir.path().join(format!("p{index}.log"))).await;
        }
        let front = free_port();
        let stats_socket = dir.path().join("haproxy.sock");
        let ports: Vec<u16> = processes.iter().map(|(port, _)| *port).collect();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(front, &ports, &stats_socket)).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let haproxy = Reaped(
            Command::new(HAPROXY)
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("haproxy starts"),
        );
        let deployment = Self {
            dir,
            processes,
            _haproxy: haproxy,
            base: format!("http://127.0.0.1:{front}"),
            stats_socket,
            http,
            database_urls,
            metrics_ports,
        };
        deployment.wait_for_servers_up(count).await;
        deployment
    }

    /// The base URL of process `index`, bypassing HAProxy.
    fn direct(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.processes[index].0)
    }

    /// `show stat` from HAProxy's stats socket: per server of the backend, its status and
    /// the 2xx answers it gave.
    fn server_stats(&self) -> BTreeMap<String, (String, u64)> {
        let mut socket = std::os::unix::net::UnixStream::connect(&self.stats_socket).expect("stats socket");
        socket.write_all(b"show stat\n").unwrap();
        let mut text = String::new();
        socket.read_to_string(&mut text).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> =
            lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).expect("a stats column");
        let (px, sv, status, ok) = (column("pxname"), column("svname"), column("status"), column("hrsp_2xx"));
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > ok && f[px] == "conduit" && f[sv].starts_with('c'))
            .map(|f| (f[sv].to_owned(), (f[status].to_owned(), f[ok].parse().unwrap_or(0))))
            .collect()
    }

    async fn wait_for_servers_up(&self, up: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.stats_socket.exists() {
                let stats = self.server_stats();
                if stats.values().filter(|(status, _)| status == "UP").count() == up {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "HAProxy never saw {up} servers up: {stats:?}\n{}",
                    self.logs()
                );
            }
            assert!(Instant::now() < deadline, "HAProxy did not start\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL process `index`: no shutdown, no flush.
    fn kill(&mut self, index: usize) {
        let mut child = self.processes[index].1.take().expect("a running process");
        child.0.kill().expect("SIGKILL");
        child.0.wait().unwrap();
    }

    /// Stop process `index` as systemd would (SIGTERM: it stops accepting, finishes what it
    /// serves and exits), start it again and wait until HAProxy has it back in rotation.
    async fn restart(&mut self, index: usize) {
        let mut child = self.processes[index].1.take().expect("a running process");
        let pid = libc::pid_t::try_from(child.0.id()).unwrap();
        // SAFETY: signals a child process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "process {index} did not stop on SIGTERM\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let port = self.processes[index].0;
        let ports = (port, self.metrics_ports[index]);
        self.processes[index].1 =
            Some(spawn_conduit(self.dir.path(), index, ports, &self.database_urls[index]));
        wait_until_ready(&self.http, port, &self.dir.path().join(format!("p{index}.log"))).await;
        let up = self.processes.iter().filter(|(_, p)| p.is_some()).count();
        self.wait_for_servers_up(up).await;
    }

    /// Whether process `index` runs the server's background work now, by its
    /// `conduit_leading` metric (served without the database).
    async fn leads(&self, index: usize) -> bool {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_ports[index]);
        let text = self.http.get(url).send().await.unwrap().text().await.unwrap();
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix("conduit_leading "))
            .unwrap_or_else(|| panic!("no conduit_leading in process {index}'s metrics"));
        value.trim() == "1"
    }

    /// Wait until exactly one of the running processes leads, and say which.
    async fn one_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut leaders = Vec::new();
            for (index, (_, child)) in self.processes.iter().enumerate() {
                if child.is_some() && self.leads(index).await {
                    leaders.push(index);
                }
            }
            if let [one] = leaders[..] {
                return one;
            }
            assert!(Instant::now() < deadline, "leaders: {leaders:?}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/_conduit/ready` of process `index`, bypassing HAProxy.
    async fn ready(&self, index: usize) -> StatusCode {
        match self.http.get(format!("{}/_conduit/ready", self.direct(index))).send().await {
            Ok(response) => response.status(),
            Err(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// Wait until `/_conduit/ready` of process `index` answers `status`.
    async fn wait_ready(&self, index: usize, status: StatusCode) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.ready(index).await != status {
            assert!(Instant::now() < deadline, "process {index} never answered {status}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for index in 0..self.processes.len() {
            let path = self.dir.path().join(format!("p{index}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all += &format!("--- process {index} (last lines)\n");
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all += "--- haproxy\n";
        all += &std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default();
        all
    }

    async fn call(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{base}{path}")).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(e) => (StatusCode::BAD_GATEWAY, json!({"transport": e.to_string()})),
        }
    }
}

/// A process serving the client API on `ports.0` and its metrics on `ports.1`.
fn spawn_conduit(dir: &Path, index: usize, ports: (u16, u16), database_url: &str) -> Reaped {
    let (port, metrics) = ports;
    let config = dir.join(format!("p{index}.toml"));
    std::fs::write(
        &config,
        format!(
            "[global]\n\
             server_name = \"localhost\"\n\
             address = \"127.0.0.1\"\n\
             port = {port}\n\
             database_backend = \"postgresql\"\n\
             database_url = \"{database_url}\"\n\
             database_pool_size = 6\n\
             database_path = \"{}\"\n\
             multi_process = true\n\
             media_path = \"{}\"\n\
             allow_registration = true\n\
             rate_limiting = false\n\
             argon2_memory_kib = 64\n\
             argon2_iterations = 1\n\
             [[global.listeners]]\n\
             address = \"127.0.0.1\"\n\
             port = {port}\n\
             resources = [\"client\"]\n\
             [[global.listeners]]\n\
             address = \"127.0.0.1\"\n\
             port = {metrics}\n\
             resources = [\"metrics\"]\n",
            dir.join(format!("p{index}")).display(),
            dir.join("media").display(),
        ),
    )
    .unwrap();
    // Appended to: a restarted process keeps one log.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("p{index}.log")))
        .unwrap();
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_conduit"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("CONDUIT_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("conduit starts"),
    )
}

/// Poll the process's readiness until it answers (it migrates and binds first).
async fn wait_until_ready(http: &reqwest::Client, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = http.get(format!("http://127.0.0.1:{port}/_conduit/ready")).send().await
            && response.status() == StatusCode::OK
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process on {port} never became ready:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// HAProxy in front of the processes: every request balanced round robin, servers checked
/// at `/_conduit/ready` every 500 ms and out of rotation after two failures, a request
/// whose connection failed or got no answer retried on another server (`redispatch`).
fn haproxy_config(front: u16, ports: &[u16], stats: &Path) -> String {
    let mut text = format!(
        "global\n  maxconn 512\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\
         \x20 retries 3\n  option redispatch 1\n  retry-on conn-failure empty-response response-timeout\n\
         frontend matrix\n  bind 127.0.0.1:{front}\n  default_backend conduit\n\
         backend conduit\n  balance roundrobin\n  option httpchk GET /_conduit/ready\n\
         \x20 http-check expect status 200\n  default-server inter 500ms fall 2 rise 1\n",
        stats.display()
    );
    for (index, port) in ports.iter().enumerate() {
        text += &format!("  server c{index} 127.0.0.1:{port} check\n");
    }
    text
}

async fn register(d: &Deployment, name: &str) -> (String, String) {
    let response = d
        .http
        .post(format!("{}{V3}/register", d.base))
        .json(&json!({"username": name, "password": format!("pw-{name}-123"), "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    (body["user_id"].as_str().unwrap().to_owned(), body["access_token"].as_str().unwrap().to_owned())
}

/// `/sync` long-polls on `base` from `since` until `room`'s timeline has a message: the
/// messages, the batch to go on from, and the answers that came back without one (other
/// streams move too, e.g. the sender's presence).
async fn poll_for_message(
    d: &Deployment,
    base: &str,
    token: &str,
    since: &str,
    room: &str,
) -> (Vec<String>, String, Vec<Value>) {
    let mut since = since.to_owned();
    let mut empty = Vec::new();
    loop {
        let (status, sync) = d
            .call(base, reqwest::Method::GET, &format!("{V3}/sync?timeout=20000&since={since}"), token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{sync}");
        let bodies: Vec<String> = sync["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect();
        since = sync["next_batch"].as_str().unwrap().to_owned();
        if !bodies.is_empty() {
            return (bodies, since, empty);
        }
        empty.push(sync);
        assert!(empty.len() < 10, "ten answers without the message: {empty:?}");
    }
}

/// The `load …` messages of `room` as process `index` shows them, oldest first.
async fn load_messages(d: &Deployment, index: usize, token: &str, room: &str) -> Vec<(String, String)> {
    let (status, page) = d
        .call(
            &d.direct(index),
            reqwest::Method::GET,
            &format!("{V3}/rooms/{room}/messages?dir=b&limit=200"),
            token,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    loaded_in(&page)
}

/// The `load …` messages of a `/messages` page read backwards, oldest first.
fn loaded_in(page: &Value) -> Vec<(String, String)> {
    let mut loaded: Vec<(String, String)> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let body = e["content"]["body"].as_str().filter(|b| b.starts_with("load "))?;
            Some((e["event_id"].as_str()?.to_owned(), body.to_owned()))
        })
        .collect();
    loaded.reverse();
    loaded
}

/// `load_messages` once process `index` shows at least `count` of them (or 15 s passed).
async fn loaded_once_caught_up(
    d: &Deployment,
    index: usize,
    token: &str,
    room: &str,
    count: usize,
) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let loaded = load_messages(d, index, token, room).await;
        if loaded.len() >= count || Instant::now() > deadline {
            return loaded;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A public room Alice (`alice_token`) creates and Bob (`bob_token`) joins, through HAProxy.
async fn public_room_with(d: &Deployment, alice_token: &str, bob_token: &str) -> String {
    let (status, created) = d
        .call(
            &d.base,
            reqwest::Method::POST,
            &format!("{V3}/createRoom"),
            alice_token,
            Some(json!({"preset": "public_chat"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let room = created["room_id"].as_str().unwrap().to_owned();
    let (status, joined) = d
        .call(&d.base, reqwest::Method::POST, &format!("{V3}/join/{room}"), bob_token, Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    room
}

/// Send `body` through HAProxy as a client would: on an error or no answer, the same
/// transaction ID again, so a send the server took and answered is never duplicated.
async fn send_until_acknowledged(
    d: &Deployment,
    token: &str,
    room: &str,
    txn: &str,
    body: &str,
) -> (String, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        if Instant::now() > deadline {
            break;
        }
        let (status, answer) = d
            .call(
                &d.base,
                reqwest::Method::PUT,
                &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
                token,
                Some(json!({"msgtype": "m.text", "body": body})),
            )
            .await;
        if status == StatusCode::OK {
            return (answer["event_id"].as_str().unwrap().to_owned(), attempt);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{txn} was never acknowledged\n{}", d.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_behind_haproxy_serve_sdk_clients_restart_in_turn_and_survive_a_sigkill() {
    let python = provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with matrix-nio");
    let rust_sdk = provided_by_scripts_test("CONDUIT_RUST_SDK_BIN", "the matrix-rust-sdk check binary");
    let mut d = Deployment::start(3).await;

    // Real SDK clients through the balancer: every request may land on any process.
    run_client_check(
        "matrix-nio through HAProxy",
        python.clone(),
        vec![script("sdk/nio_e2ee.py"), d.base.clone().into()],
    )
    .await;
    run_client_check("matrix-rust-sdk through HAProxy", rust_sdk, vec![d.base.clone().into()]).await;
    let stats = d.server_stats();
    assert_eq!(stats.len(), 3, "{stats:?}");
    for (server, (_, answered)) in &stats {
        assert!(*answered > 20, "{server} answered only {answered} requests: {stats:?}");
    }

    // A message sent on one process wakes a long-poll waiting on another.
    let (alice, alice_token) = register(&d, "alice").await;
    let (_, bob_token) = register(&d, "bob").await;
    let room = public_room_with(&d, &alice_token, &bob_token).await;
    let (status, first) =
        d.call(&d.direct(0), reqwest::Method::GET, &format!("{V3}/sync"), &bob_token, None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let mut wakes = Vec::new();
    for round in 0..5 {
        let poller = {
            let (base, token, since, room) = (d.direct(0), bob_token.clone(), since.clone(), room.clone());
            let d = &d;
            async move {
                let answer = poll_for_message(d, &base, &token, &since, &room).await;
                (answer, Instant::now())
            }
        };
        let sender = async {
            // Give the long-poll time to be waiting: a wake, not an immediate answer, is tested.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (status, sent) = d
                .call(
                    &d.direct(1 + round % 2),
                    reqwest::Method::PUT,
                    &format!("{V3}/rooms/{room}/send/m.room.message/wake{round}"),
                    &alice_token,
                    Some(json!({"msgtype": "m.text", "body": format!("wake {round}")})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{sent}");
            Instant::now()
        };
        let (((bodies, next, empty), seen_at), sent_at) = tokio::join!(poller, sender);
        wakes.push(seen_at.saturating_duration_since(sent_at));
        if !empty.is_empty() {
            eprintln!("round {round}: {} answers before the message: {empty:?}", empty.len());
        }
        assert_eq!(bodies, vec![format!("wake {round}")], "round {round}");
        since = next;
    }
    wakes.sort();
    eprintln!("send on one process → long-poll on another answered: median {:?}, all {wakes:?}", wakes[2]);
    // A wake, not the 20 s timeout (the figure itself is a benchmark's, not a test's).
    assert!(wakes[4] < Duration::from_secs(5), "{wakes:?}");

    // A rolling restart under a send load: the client sees no failed request (it does not
    // retry here; HAProxy retries a request whose connection closed before an answer).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (http, base, token, room, stop) =
            (d.http.clone(), d.base.clone(), alice_token.clone(), room.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let (mut sent, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = http
                    .put(format!("{base}{V3}/rooms/{room}/send/m.room.message/rolling{sent}"))
                    .bearer_auth(&token)
                    .json(&json!({"msgtype": "m.text", "body": format!("rolling {sent}")}))
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status() == StatusCode::OK => {}
                    Ok(response) => failed.push(format!("rolling{sent}: {}", response.status())),
                    Err(e) => failed.push(format!("rolling{sent}: {e}")),
                }
                sent += 1;
            }
            (sent, failed)
        })
    };
    let restarting = Instant::now();
    for index in 0..3 {
        d.restart(index).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (sent, failed) = load.await.unwrap();
    eprintln!(
        "rolling restart of 3 processes in {:?}: {sent} sends, {} failed",
        restarting.elapsed(),
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed during the rolling restart: {failed:?}\n{}", d.logs());
    assert!(sent > 10, "too few sends to tell: {sent}");

    // A send load through the balancer; one process is killed with SIGKILL a third of the way.
    let mut acknowledged = Vec::new();
    let mut retried = 0;
    let mut killed_at = Instant::now();
    for i in 0..90 {
        if i == 30 {
            d.kill(1);
            killed_at = Instant::now();
        }
        let (event_id, attempts) =
            send_until_acknowledged(&d, &alice_token, &room, &format!("load{i}"), &format!("load {i}")).await;
        retried += attempts;
        acknowledged.push(event_id);
    }
    eprintln!(
        "90 sends through HAProxy, process 1 killed after 30: {retried} client retries, the last 60 in {:?}",
        killed_at.elapsed()
    );

    // Every acknowledged send is in the room, once, in order, whichever process is asked:
    // once the others see the killed process gone, which holds back what they show.
    for survivor in [0, 2] {
        let loaded = loaded_once_caught_up(&d, survivor, &bob_token, &room, acknowledged.len()).await;
        eprintln!(
            "process {survivor} showed every acknowledged send {:?} after the kill",
            killed_at.elapsed()
        );
        let ids: Vec<&String> = loaded.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, acknowledged.iter().collect::<Vec<_>>(), "process {survivor}\n{}", d.logs());
        let bodies: HashSet<&String> = loaded.iter().map(|(_, body)| body).collect();
        assert_eq!(bodies.len(), 90, "a message was stored twice");
    }
    d.wait_for_servers_up(2).await;
    assert_eq!(alice, "@alice:localhost");

    // Clients carry on through the two processes left.
    run_client_check(
        "matrix-nio through HAProxy after a SIGKILL",
        python,
        vec![script("sdk/nio_e2ee.py"), d.base.clone().into()],
    )
    .await;
}

/// What process `index` answers bob about the room while it cannot reach the database:
/// each answer's status, and any answer that is not a server error.
async fn answers_while_cut_off(
    d: &Deployment,
    index: usize,
    token: &str,
    room: &str,
    since: &str,
) -> Vec<String> {
    let base = d.direct(index);
    let probes = [
        (reqwest::Method::GET, format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), None),
        (reqwest::Method::GET, format!("{V3}/sync?since={since}&timeout=0"), None),
        (reqwest::Method::GET, format!("{V3}/sync"), None),
        (reqwest::Method::GET, format!("{V3}/rooms/{room}/state"), None),
        (reqwest::Method::GET, format!("{V3}/rooms/{room}/joined_members"), None),
        (reqwest::Method::GET, format!("{V3}/account/whoami"), None),
        (
            reqwest::Method::PUT,
            format!("{V3}/rooms/{room}/send/m.room.message/cut-{}", free_port()),
            Some(json!({"msgtype": "m.text", "body": "through the cut-off process"})),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body) in probes {
        let (status, answer) = d.call(&base, method.clone(), &path, token, body).await;
        if !status.is_server_error() {
            wrong.push(format!("{method} {path}: {status} {answer}"));
        }
    }
    wrong
}

/// The database's faults, with three real processes behind HAProxy, each reaching
/// PostgreSQL through a TCP relay the test can cut:
/// - the leading process cut off from the database stops serving: it is taken out of
///   rotation, answers every client request with an error (never with what it held before
///   the cut), and another process takes over the background work; once the relay opens
///   again it catches up and serves again;
/// - the database stopped and started again under a send load: clients see errors or
///   waits, never wrong data (every page of history read meanwhile is a prefix of what was
///   acknowledged), every process reconnects, every acknowledged send is there once and in
///   order on each, and a send on one process wakes a long-poll on another again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_cut_off_from_the_database_stops_serving_and_a_database_restart_loses_nothing() {
    // A cluster of its own: this test stops it.
    let cluster = PgCluster::start().expect("a PostgreSQL cluster");
    let url = cluster.create_database("faults").unwrap();
    let database = SocketAddr::from(([127, 0, 0, 1], cluster.port));
    let mut relays = Vec::new();
    let mut urls = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        relays.push(Relay::start(port, database).await);
        urls.push(url.replace(&format!(":{}/", cluster.port), &format!(":{port}/")));
    }
    let d = Deployment::start_on(urls).await;
    let (_, alice_token) = register(&d, "alice").await;
    let (_, bob_token) = register(&d, "bob").await;
    let room = public_room_with(&d, &alice_token, &bob_token).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (id, _) = send_until_acknowledged(
            &d,
            &alice_token,
            &room,
            &format!("before{i}"),
            &format!("load before {i}"),
        )
        .await;
        acknowledged.push(id);
    }

    // Cut the leader off, after it has served bob (it holds his room in its caches).
    let cut = d.one_leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
    let (status, synced) =
        d.call(&d.direct(cut), reqwest::Method::GET, &format!("{V3}/sync"), &bob_token, None).await;
    assert_eq!(status, StatusCode::OK, "{synced}");
    let since = synced["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(load_messages(&d, cut, &bob_token, &room).await.len(), 5);
    relays[cut].set_open(false);
    let cut_at = Instant::now();
    d.wait_ready(cut, StatusCode::SERVICE_UNAVAILABLE).await;
    eprintln!("process {cut} (the leader) cut off: not ready after {:?}", cut_at.elapsed());
    d.wait_for_servers_up(2).await;
    // The cut-off process learns it lost the lead on its next ask (each second).
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        let leader = d.one_leader().await;
        if others.contains(&leader) {
            break leader;
        }
        assert!(Instant::now() < deadline, "the cut-off process {cut} still leads\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("process {leader} leads {:?} after the cut", cut_at.elapsed());

    // The others serve, and what they take the cut-off process cannot show: it answers
    // errors, again and again, never its old view.
    let (status, sent) = d
        .call(
            &d.direct(others[0]),
            reqwest::Method::PUT,
            &format!("{V3}/rooms/{room}/send/m.room.message/during-cut"),
            &alice_token,
            Some(json!({"msgtype": "m.text", "body": "load while cut off"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    acknowledged.push(sent["event_id"].as_str().unwrap().to_owned());
    for i in 0..10 {
        let (id, _) =
            send_until_acknowledged(&d, &alice_token, &room, &format!("cut{i}"), &format!("load cut {i}"))
                .await;
        acknowledged.push(id);
        let wrong = answers_while_cut_off(&d, cut, &bob_token, &room, &since).await;
        assert!(wrong.is_empty(), "the cut-off process answered:\n{}\n{}", wrong.join("\n"), d.logs());
    }
    assert!(!d.leads(cut).await, "the cut-off process still says it leads");

    // The relay opens: the process reconnects, catches up and is back in rotation.
    relays[cut].set_open(true);
    d.wait_ready(cut, StatusCode::OK).await;
    d.wait_for_servers_up(3).await;
    let ids: Vec<String> =
        load_messages(&d, cut, &bob_token, &room).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, acknowledged, "process {cut} after it reconnected\n{}", d.logs());
    let (bodies, _, _) = poll_for_message(&d, &d.direct(cut), &bob_token, &since, &room).await;
    // Up to the last send (the timeline is limited: the sends before it are in /messages).
    assert_eq!(bodies.last().map(String::as_str), Some("load cut 9"), "{bodies:?}");
    assert_eq!(d.one_leader().await, leader, "leadership moved back without a reason");

    // The database stopped and started again under a send load through HAProxy, while bob
    // reads the history through HAProxy over and over.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sent_count = std::sync::atomic::AtomicUsize::new(0);
    let loader = async {
        let mut ids = Vec::new();
        let mut retried = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let i = ids.len();
            let (id, attempts) = send_until_acknowledged(
                &d,
                &alice_token,
                &room,
                &format!("restart{i}"),
                &format!("load restart {i}"),
            )
            .await;
            ids.push(id);
            retried += attempts;
            sent_count.store(ids.len(), std::sync::atomic::Ordering::Relaxed);
        }
        (ids, retried)
    };
    let reader = async {
        let (mut pages, mut errors) = (Vec::new(), 0u32);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (status, page) = d
                .call(
                    &d.base,
                    reqwest::Method::GET,
                    &format!("{V3}/rooms/{room}/messages?dir=b&limit=200"),
                    &bob_token,
                    None,
                )
                .await;
            if status == StatusCode::OK {
                pages.push(loaded_in(&page).into_iter().map(|(id, _)| id).collect::<Vec<String>>());
            } else {
                assert!(status.is_server_error(), "{status} {page}");
                errors += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (pages, errors)
    };
    let driver = async {
        let (d, sent_count) = (&d, &sent_count);
        let until = move |n: usize| async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while sent_count.load(std::sync::atomic::Ordering::Relaxed) < n {
                assert!(Instant::now() < deadline, "the load stalled at {n}\n{}", d.logs());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        until(10).await;
        let stopped_at = Instant::now();
        tokio::task::block_in_place(|| cluster.stop());
        for index in 0..3 {
            d.wait_ready(index, StatusCode::SERVICE_UNAVAILABLE).await;
        }
        let during = sent_count.load(std::sync::atomic::Ordering::Relaxed);
        tokio::task::block_in_place(|| cluster.launch()).expect("the cluster starts again");
        for index in 0..3 {
            d.wait_ready(index, StatusCode::OK).await;
        }
        d.wait_for_servers_up(3).await;
        eprintln!(
            "database down and up again; all processes ready {:?} after the stop",
            stopped_at.elapsed()
        );
        until(during + 20).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let ((restart_ids, retried), (pages, read_errors), ()) = tokio::join!(loader, reader, driver);
    acknowledged.extend(restart_ids);
    eprintln!(
        "{} sends across the restart ({retried} client retries); {} history pages read, {read_errors} errors",
        acknowledged.len(),
        pages.len()
    );
    for page in &pages {
        assert!(
            page.len() <= acknowledged.len() && acknowledged[..page.len()] == page[..],
            "a history page that is not what was acknowledged: {page:?}\nacknowledged: {acknowledged:?}"
        );
    }
    for index in 0..3 {
        let loaded = loaded_once_caught_up(&d, index, &bob_token, &room, acknowledged.len()).await;
        let ids: Vec<String> = loaded.into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, acknowledged, "process {index} after the restart\n{}", d.logs());
    }
    d.one_leader().await;

    // Every process hears the others again: a send on one wakes a long-poll on the next.
    for index in 0..3 {
        let (poller, sender) = (index, (index + 1) % 3);
        let (status, synced) =
            d.call(&d.direct(poller), reqwest::Method::GET, &format!("{V3}/sync"), &bob_token, None).await;
        assert_eq!(status, StatusCode::OK, "{synced}");
        let since = synced["next_batch"].as_str().unwrap().to_owned();
        let base = d.direct(poller);
        let poll = poll_for_message(&d, &base, &bob_token, &since, &room);
        let send = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (status, sent) = d
                .call(
                    &d.direct(sender),
                    reqwest::Method::PUT,
                    &format!("{V3}/rooms/{room}/send/m.room.message/after{index}"),
                    &alice_token,
                    Some(json!({"msgtype": "m.text", "body": format!("after {index}")})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{sent}");
        };
        let ((bodies, _, _), ()) = tokio::join!(poll, send);
        assert_eq!(bodies, vec![format!("after {index}")], "process {poller} after the restart");
    }
    drop(d);
    cluster.stop_and_remove();
}
