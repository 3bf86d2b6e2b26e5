//! A throwaway PostgreSQL cluster for tests: Debian's PostgreSQL 15 server binaries, a data
//! directory in a temp dir, listening on loopback only, trusting local connections. Run as
//! `nobody` when the tests run as root (PostgreSQL refuses to run as root). The server is
//! stopped and its directory removed when the cluster is dropped (a cluster kept for a whole
//! test process is stopped with [`PgCluster::stop_and_remove`] at exit); and the server
//! stops by itself when the cluster's keeper thread is gone, so a killed test leaves nothing
//! running.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Where Debian's PostgreSQL 15 server binaries are.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running test cluster.
pub struct PgCluster {
    pub port: u16,
    dir: PathBuf,
    data: PathBuf,
    owner: Option<(u32, u32)>,
    child: Mutex<Option<Child>>,
    /// Starts the server's processes from a thread that lives as long as the cluster: the
    /// parent-death signal follows the thread that started a child, and a test's own thread
    /// may end first.
    keeper: Mutex<std::sync::mpsc::Sender<SpawnRequest>>,
}

/// Immediate shutdown (SIGQUIT), then wait for the postmaster to be gone.
fn stop_pid(pid: u32) {
    // SAFETY: signalling a process this process started.
    unsafe {
        libc::kill(pid as i32, libc::SIGQUIT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        // SAFETY: reaps our own child; WNOHANG never blocks.
        let reaped = unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped != 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nobody() -> Result<(u32, u32), String> {
    let name = std::ffi::CString::new("nobody").expect("no NUL");
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err("no user `nobody` to run PostgreSQL as".into());
    }
    // SAFETY: non-null, as checked.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
    }
    Ok(())
}

impl PgCluster {
    /// initdb a new cluster in a temp dir and start it.
    pub fn start() -> Result<Self, String> {
        let initdb = Path::new(PG_BIN).join("initdb");
        if !initdb.exists() {
            return Err(format!(
                "{} is missing: install Debian's postgresql-15 (scripts/test does)",
                initdb.display()
            ));
        }
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 { Some(nobody()?) } else { None };
        let dir = new_dir()?;
        let data = dir.join("data");
        std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        chown(&dir, owner)?;
        chown(&data, owner)?;
        let mut cmd = Command::new(&initdb);
        cmd.args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid).current_dir(&dir);
        }
        let out = cmd.output().map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let port = free_port()?;
        let cluster =
            Self { port, dir, data, owner, child: Mutex::new(None), keeper: Mutex::new(keeper_thread()?) };
        cluster.launch()?;
        Ok(cluster)
    }

    /// Start the server on the existing data directory (again, after [`Self::stop`]).
    pub fn launch(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("postgres.log"))
            .map_err(|e| format!("log file: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new(Path::new(PG_BIN).join("postgres"));
        cmd.arg("-D").arg(&self.data).args(["-p", &self.port.to_string()]);
        for setting in [
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            // A test database: nothing here must survive a power loss.
            "fsync=off",
            "full_page_writes=off",
            "max_connections=300",
            "shared_buffers=32MB",
        ] {
            cmd.args(["-c", setting]);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).current_dir(&self.dir);
        }
        // SAFETY: prctl and getppid are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                // Stopped (immediately) when the thread that started it ends.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.keeper.lock().map_err(|_| "poisoned")?.send((cmd, tx)).map_err(|_| "keeper thread gone")?;
        let child = rx
            .recv()
            .map_err(|_| "keeper thread gone")?
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        *self.child.lock().map_err(|_| "poisoned")? = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(format!("postgres did not start on port {}: {log}", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server at once (immediate shutdown), keeping its data: clients see their
    /// connections cut and new ones refused until [`Self::launch`].
    pub fn stop(&self) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(child) = child {
            stop_pid(child.id());
        }
    }

    /// Stop the server and delete its directory (for a cluster that is never dropped).
    pub fn stop_and_remove(&self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// A URL for database `name` as the superuser.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Create database `name` if it does not exist, and give its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        let exists = self.psql("postgres", &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"))?;
        if exists.trim() != "1" {
            self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        }
        Ok(self.url(name))
    }

    /// Run one SQL command with psql and give its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.url(database), "-c", sql])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql `{sql}`: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_and_remove();
    }
}

type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// A thread that starts the commands it is sent, until its sender is dropped.
fn keeper_thread() -> Result<std::sync::mpsc::Sender<SpawnRequest>, String> {
    let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("pg-cluster-keeper".into())
        .spawn(move || {
            while let Ok((mut cmd, answer)) = rx.recv() {
                let _ = answer.send(cmd.spawn());
            }
        })
        .map_err(|e| format!("keeper thread: {e}"))?;
    Ok(tx)
}

/// A new directory under the system's temp dir.
fn new_dir() -> Result<PathBuf, String> {
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("conduit-pg-{}-{nanos}-{attempt}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Err("cannot make a temp dir for PostgreSQL".into())
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("local addr: {e}"))
}
