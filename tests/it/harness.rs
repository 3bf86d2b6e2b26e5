//! Boots a real server (RocksDB in a temp dir, or PostgreSQL with
//! `CONDUIT_TEST_BACKEND=postgresql`; port 0) and offers terse HTTP helpers.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use conduit::storage::pg_cluster::PgCluster;
use conduit::{
    config::{Config, ListenerResource},
    net::{Listeners, TlsReloader},
    server::Server,
    service::clock::ManualClock,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub struct TestServer {
    pub base: String,
    pub clock: Arc<ManualClock>,
    /// The running server's services, for driving background work (sweeps) a test cannot
    /// wait for in real time.
    pub services: Arc<conduit::service::Services>,
    pub http: reqwest::Client,
    /// Every listener: its base URL (`http://` or `https://`) and what it serves.
    pub listeners: Vec<(String, Vec<ListenerResource>)>,
    /// Reloads the TLS listeners' certificates.
    pub tls: TlsReloader,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<conduit::Result<()>>>,
    pub dir: tempfile::TempDir,
}

/// A port bound for a server not built yet (see [`TestServer::reserve`]).
pub struct Reserved {
    listener: TcpListener,
    /// The URL the server will answer at.
    pub base: String,
}

/// A logged-in device.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

/// A test config: open registration, cheap password hashing. With
/// `CONDUIT_TEST_BACKEND=postgresql` the server's database is on PostgreSQL (see
/// [`use_postgresql`]); otherwise RocksDB in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        database_path: dir.join("db"),
        allow_registration: true,
        // Cheap hashing keeps tests fast; production defaults are tested in the config tests.
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        // Tests send hundreds of requests at once; rate_limits.rs turns the limits on.
        rate_limiting: false,
        ..Config::default()
    };
    if on_postgresql() {
        use_postgresql(&mut config, dir);
    }
    config
}

/// The test process's PostgreSQL cluster, started on first use and stopped (its directory
/// removed) when the process exits.
pub fn shared_cluster() -> &'static PgCluster {
    static SHARED: std::sync::OnceLock<PgCluster> = std::sync::OnceLock::new();
    extern "C" fn stop_at_exit() {
        if let Some(cluster) = SHARED.get() {
            cluster.stop_and_remove();
        }
    }
    SHARED.get_or_init(|| {
        let cluster = PgCluster::start().expect("a PostgreSQL test cluster");
        // SAFETY: registers a plain function that only stops the cluster.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        cluster
    })
}

/// Put the server of `dir` on PostgreSQL: one cluster per test process (started on first
/// use, stopped at exit), one database per server directory, so a restarted server finds
/// its data again.
pub fn use_postgresql(config: &mut Config, dir: &std::path::Path) {
    config.database_backend = conduit::config::DatabaseBackend::Postgresql;
    config.database_url = Some(postgresql_url(dir));
    config.database_pool_size = 8;
}

/// The URL of the PostgreSQL database of the server of `dir` (created on first use).
pub fn postgresql_url(dir: &std::path::Path) -> String {
    let cluster = shared_cluster();
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let name = format!("conduit_{:016x}", hasher.finish());
    cluster.create_database(&name).expect("a test database")
}

/// Two conduit processes sharing one PostgreSQL database (`multi_process`), as behind a
/// load balancer: one configuration (server name, media directory), each process with a
/// directory of its own for its control socket. Whatever the run's backend.
pub async fn start_sharing_pair() -> (TestServer, TestServer) {
    start_sharing_pair_with(|_| {}).await
}

/// [`start_sharing_pair`] with a configuration `adjust`ed (both processes share it).
pub async fn start_sharing_pair_with(adjust: impl FnOnce(&mut Config)) -> (TestServer, TestServer) {
    let first = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(first.path());
    adjust(&mut config);
    use_postgresql(&mut config, first.path());
    config.multi_process = true;
    config.media_path = Some(first.path().join("media"));
    let second = tempfile::tempdir().expect("temp dir");
    let mut other = config.clone();
    other.database_path = second.path().join("db");
    let a = TestServer::boot(config, first).await;
    let b = TestServer::boot(other, second).await;
    (a, b)
}

/// [`start_sharing_pair`] federating as [`TestServer::start_federating`] sets a server up:
/// both processes named `127.0.0.1:<port>`, the first serving federation on that port
/// (where other servers reach the name), the second only the client API.
pub async fn start_federating_sharing_pair(pki: &Pki) -> (TestServer, TestServer) {
    use conduit::config::ListenerConfig;
    let first = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let (cert, key) = pki.server_cert("127.0.0.1");
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let mut config = test_config(first.path());
    config.server_name = format!("127.0.0.1:{port}").try_into().unwrap();
    config.allow_federation = true;
    config.federation_ca_file = Some(pki.ca_path.clone());
    config.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    config.federation_timeout_secs = 10;
    use_postgresql(&mut config, first.path());
    config.multi_process = true;
    config.media_path = Some(first.path().join("media"));
    let client_only = vec![ListenerConfig::plain(loopback, 0, &[ListenerResource::Client])];
    let second = tempfile::tempdir().expect("temp dir");
    let mut other = config.clone();
    other.database_path = second.path().join("db");
    other.listeners = client_only.clone();
    let mut federation = ListenerConfig::plain(loopback, port, &[ListenerResource::Federation]);
    federation.tls_certificate_path = Some(cert);
    federation.tls_private_key_path = Some(key);
    config.listeners = client_only.into_iter().chain([federation]).collect();
    let a = TestServer::listen_on(config, first, Arc::new(ManualClock::new())).await;
    let b = TestServer::listen_on(other, second, Arc::new(ManualClock::new())).await;
    (a, b)
}

/// Whether this run puts test servers on PostgreSQL (`CONDUIT_TEST_BACKEND=postgresql`).
pub fn on_postgresql() -> bool {
    std::env::var("CONDUIT_TEST_BACKEND").is_ok_and(|b| b == "postgresql")
}

impl TestServer {
    /// Advance the manual clock by `step_ms` every 10 ms of wall-clock time until `done`
    /// holds (a deadline of 5 s). For a retry that the server schedules from the moment it
    /// saw a failure: the test cannot observe that moment, so one advance could land before
    /// the retry is scheduled and leave it waiting for good.
    pub async fn advance_until(&self, step_ms: u64, what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            self.clock.advance_ms(step_ms);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never saw {what} while the clock advanced");
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        Self::boot(config, dir).await
    }

    pub async fn boot(config: Config, dir: tempfile::TempDir) -> Self {
        Self::boot_with_clock(config, dir, Arc::new(ManualClock::new())).await
    }

    /// As `boot`, on a given clock: a test that restarts a server keeps its time, and may
    /// move it while the server is down.
    pub async fn boot_with_clock(config: Config, dir: tempfile::TempDir, clock: Arc<ManualClock>) -> Self {
        Self::boot_at(config, dir, clock, "127.0.0.1:0").await
    }

    /// [`Self::boot_with_clock`] listening on `addr`.
    async fn boot_at(config: Config, dir: tempfile::TempDir, clock: Arc<ManualClock>, addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind");
        Self::boot_on(config, dir, clock, listener).await
    }

    /// A port bound before the server is built, for a test whose configuration names the
    /// server's own URL (single sign-on: the identity provider must know the callback URL
    /// before the server is configured with the provider).
    pub async fn reserve() -> Reserved {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        Reserved { listener, base }
    }

    /// Boot the test config, adjusted, on a reserved port.
    pub async fn boot_reserved(reserved: Reserved, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        Self::boot_on(config, dir, Arc::new(ManualClock::new()), reserved.listener).await
    }

    async fn boot_on(
        config: Config,
        dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        listener: TcpListener,
    ) -> Self {
        let server = Server::build_with_clock(config, clock.clone()).expect("server builds");
        let services = Arc::clone(server.services());
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, async move {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            clock,
            services,
            http: reqwest::Client::new(),
            listeners: vec![(
                format!("http://{addr}"),
                vec![ListenerResource::Client, ListenerResource::Federation],
            )],
            tls: TlsReloader::default(),
            shutdown: Some(tx),
            task: Some(task),
            dir,
        }
    }

    /// Boot with the listeners the config lists (`[[global.listeners]]`, ports 0 for the
    /// system to pick), as the binary binds them; `base` is the first that serves `client`.
    pub async fn start_listening(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        Self::listen_on(config, dir, Arc::new(ManualClock::new())).await
    }

    /// Boot a server on `config` (its listeners), an existing database directory and a
    /// clock: a server started with [`Self::start_listening`] and stopped comes back with
    /// `(*services.config).clone()`, its directory and its clock (listeners on fixed ports
    /// keep them).
    pub async fn listen_on(config: Config, dir: tempfile::TempDir, clock: Arc<ManualClock>) -> Self {
        let server = Server::build_with_clock(config, clock.clone()).expect("server builds");
        let services = Arc::clone(server.services());
        let listeners = Listeners::bind(&services.config, &[]).await.expect("listeners bind");
        let tls = listeners.tls_reloader();
        let bound: Vec<(String, Vec<ListenerResource>)> = listeners
            .iter()
            .map(|l| {
                let scheme = if l.uses_tls() { "https" } else { "http" };
                (format!("{scheme}://{}", l.local_addr), l.config.resources.clone())
            })
            .collect();
        let base = bound
            .iter()
            .find(|(_, resources)| resources.contains(&ListenerResource::Client))
            .map_or_else(|| bound[0].0.clone(), |(url, _)| url.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listeners, async move {
            let _ = rx.await;
        }));
        Self {
            base,
            clock,
            services,
            http: reqwest::Client::new(),
            listeners: bound,
            tls,
            shutdown: Some(tx),
            task: Some(task),
            dir,
        }
    }

    /// The base URL of the first listener serving `resource`.
    pub fn listener_serving(&self, resource: ListenerResource) -> &str {
        let (url, _) = self
            .listeners
            .iter()
            .find(|(_, resources)| resources.contains(&resource))
            .unwrap_or_else(|| panic!("no listener serves {resource:?}"));
        url
    }

    /// Graceful shutdown; returns the temp dir so a test can reopen the database.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran cleanly");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Stops the server and boots it again on the same database, port and clock (with the
    /// test config): clients keep their URL and tokens, and lose whatever the server held
    /// only in memory.
    pub async fn restart(self) -> Self {
        self.restart_with(|_| {}).await
    }

    /// [`Self::restart`] with the whole configuration it ran with (a federating server's
    /// name, listeners and CA included).
    pub async fn restart_as_before(self) -> Self {
        let before = (*self.services.config).clone();
        self.restart_with(move |config| *config = before).await
    }

    /// [`Self::restart`] with the test config adjusted as the server was started.
    pub async fn restart_with(self, adjust: impl FnOnce(&mut Config)) -> Self {
        let addr = self.base.trim_start_matches("http://").to_owned();
        let clock = Arc::clone(&self.clock);
        let dir = self.stop().await;
        let mut config = test_config(dir.path());
        adjust(&mut config);
        Self::boot_at(config, dir, clock, &addr).await
    }

    /// Send a request; returns status and JSON body (`Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    /// Register `name` with the dummy stage (two steps, as clients do) and return its session.
    pub async fn register(&self, name: &str, password: &str) -> Session {
        let (status, body) = self
            .post("/_matrix/client/v3/register", None, json!({"username": name, "password": password}))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let session = body["session"].as_str().expect("uiaa session").to_owned();
        let (status, body) = self
            .post(
                "/_matrix/client/v3/register",
                None,
                json!({"username": name, "password": password, "auth": {"type": "m.login.dummy", "session": session}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        session_of(&body)
    }

    /// Log in with a password; panics unless it succeeds.
    pub async fn login(&self, user: &str, password: &str, device_id: Option<&str>) -> Session {
        let mut body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
        if let Some(d) = device_id {
            body["device_id"] = json!(d);
        }
        let (status, body) = self.post("/_matrix/client/v3/login", None, body).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        session_of(&body)
    }
}

/// Assert a Matrix error: status, errcode and a message; returns the body.
pub fn expect_error(result: (StatusCode, Value), status: StatusCode, errcode: &str) -> Value {
    let (got_status, body) = result;
    assert_eq!((got_status, body["errcode"].as_str()), (status, Some(errcode)), "{body}");
    assert!(body["error"].is_string(), "error message missing: {body}");
    body
}

pub fn session_of(body: &Value) -> Session {
    Session {
        user_id: body["user_id"].as_str().expect("user_id").to_owned(),
        device_id: body["device_id"].as_str().expect("device_id").to_owned(),
        token: body["access_token"].as_str().expect("access_token").to_owned(),
    }
}

/// The `auth` object for a password stage.
pub fn password_auth(user: &str, password: &str, session: Option<&str>) -> Value {
    let mut auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password});
    if let Some(s) = session {
        auth["session"] = json!(s);
    }
    auth
}

/// POST every body at once; returns how many succeeded, asserting each other answer carries
/// `loser_errcode`. For checking that racing requests cannot both win.
pub async fn race_posts(
    server: &Arc<TestServer>,
    path: &str,
    bodies: Vec<Value>,
    loser_errcode: &str,
) -> usize {
    let racers: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (server, path) = (Arc::clone(server), path.to_owned());
            tokio::spawn(async move { server.post(&path, None, body).await })
        })
        .collect();
    let mut won = 0;
    for racer in racers {
        let (status, body) = racer.await.unwrap();
        match status {
            StatusCode::OK => won += 1,
            _ => assert_eq!(body["errcode"], loser_errcode, "{body}"),
        }
    }
    won
}

/// A private certificate authority made for one test: its certificate in a PEM file (for
/// `federation_ca_file`, Synapse's `federation_custom_ca_list`, and test clients) and
/// server certificates it signs.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_path: std::path::PathBuf,
    pub ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "conduit test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let ca_pem = issuer.pem();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).unwrap();
        Self { dir, ca_path, ca_pem, issuer }
    }

    /// A certificate for `name` (a DNS name or an IP address) signed by the CA: the paths of
    /// its PEM chain and key.
    pub fn server_cert(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let stem = format!("{}-{}", name.replace([':', '.'], "_"), rand_suffix());
        let (cert_path, key_path) =
            (self.dir.path().join(format!("{stem}.pem")), self.dir.path().join(format!("{stem}.key")));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca_pem)).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// An HTTPS client trusting only this CA.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A port free now, for a listener bound later (a server whose name or configuration must
/// carry its port before it starts).
///
/// Picked below the kernel's ephemeral range (32768–60999 by default), where every bind to
/// port 0 and every outgoing connection of the tests running beside this one takes its port.
/// Tests run in processes of their own, so a pick is also claimed across processes: a lock on
/// a file named after the port, held until this process exits. Without the claim two tests
/// picked the same port between one's pick and its bind ("Address already in use", seen in CI
/// for a federating server); with it, a server restarted on its port also finds it free.
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::sync::Mutex;
    static CLAIMS: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("conduit-test-ports");
    std::fs::create_dir_all(&dir).expect("port claim directory");
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(20_000..32_000);
        let claim = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
            .expect("port claim file");
        if claim.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMS.lock().unwrap_or_else(|e| e.into_inner()).push(claim);
            return port;
        }
    }
}

impl TestServer {
    /// A federating server named `127.0.0.1:<port>` (an IP literal with a port, which
    /// discovery connects to directly): federation on a TLS listener with a certificate from
    /// `pki` on that port, the client API on a plain listener (`base`), the CA trusted for
    /// federation and loopback allowed through the outbound guard; then `adjust`.
    pub async fn start_federating(pki: &Pki, adjust: impl FnOnce(&mut Config)) -> Self {
        use conduit::config::ListenerConfig;
        let port = free_port();
        let (cert, key) = pki.server_cert("127.0.0.1");
        let ca = pki.ca_path.clone();
        let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        Self::start_listening(move |config| {
            config.server_name = format!("127.0.0.1:{port}").try_into().unwrap();
            config.allow_federation = true;
            config.federation_ca_file = Some(ca);
            config.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
            config.federation_timeout_secs = 10;
            let mut federation = ListenerConfig::plain(loopback, port, &[ListenerResource::Federation]);
            federation.tls_certificate_path = Some(cert);
            federation.tls_private_key_path = Some(key);
            config.listeners =
                vec![ListenerConfig::plain(loopback, 0, &[ListenerResource::Client]), federation];
            adjust(config);
        })
        .await
    }

    /// The server's name.
    pub fn name(&self) -> String {
        self.services.config.server_name.to_string()
    }

    /// The base URL of its federation listener.
    pub fn federation_base(&self) -> &str {
        self.listener_serving(ListenerResource::Federation)
    }
}

/// A TCP relay from `listen` to `target` that can be closed: closed, it cuts the
/// connections it relays and refuses new ones (accepts and drops them at once).
pub struct Relay {
    open: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    pub async fn start(listen: u16, target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await.expect("relay binds");
        let (open, _) = tokio::sync::watch::channel(true);
        let state = open.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let mut state = state.clone();
                if !*state.borrow_and_update() {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = state.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { open }
    }

    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}
