//! The control channel: operator commands (`conduit create-user`, `reset-password`,
//! `purge-media`, `make-admin`, `rotate-signing-key`, `backup`, `appservice list|add|remove`) carried out by the running server, which holds the
//! database exclusively. The server listens on a Unix socket in its database directory
//! (`conduit.sock`, mode 0600, so only its own user and root can connect; removed at stop);
//! the command line sends one JSON line ([`Request`]) and reads one back ([`Reply`]). When
//! no server answers, the command line opens the database itself and runs the same
//! [`execute`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinSet,
};

use crate::{
    Error, Result,
    config::Config,
    service::{
        Services,
        context::{Actor, RequestContext},
    },
};

/// The socket's file name inside `database_path`.
pub const SOCKET_NAME: &str = "conduit.sock";
/// The longest request line read (a password and a path fit many times over).
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server of `config` listens for commands.
pub fn socket_path(config: &Config) -> PathBuf {
    config.database_path.join(SOCKET_NAME)
}

/// One operator command, as sent over the socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Create an account (registration policy does not apply).
    CreateUser { name: String, password: String, admin: bool },
    /// Set an account's password and log out all its devices.
    ResetPassword { name: String, password: String },
    /// Delete local media uploaded longer ago than this.
    PurgeMedia { older_than_secs: u64 },
    /// Grant (or with `revoke`, take away) the server-admin flag.
    MakeAdmin { name: String, revoke: bool },
    /// Write a backup into this absolute directory (new or empty).
    Backup { dir: PathBuf },
    /// Replace the server's signing key; the old one is published as expired.
    RotateSigningKey,
    /// List the application services in force and those added at run time.
    AppserviceList,
    /// Register an application service from the text of its registration (YAML or JSON).
    AppserviceAdd { text: String },
    /// Remove an application service added at run time.
    AppserviceRemove { id: String },
}

/// The answer: `ok` with the text to print, or not with the error.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

/// Carry out `request` on `services`; the text says what was done.
pub async fn execute(services: &Arc<Services>, request: Request) -> Result<String> {
    match request {
        Request::CreateUser { name, password, admin } => {
            let user_id = services.accounts.create_user(&name, &password, admin).await?;
            Ok(format!("created {user_id}{}", if admin { " (admin)" } else { "" }))
        }
        Request::ResetPassword { name, password } => {
            let user_id = services.accounts.reset_password(&name, &password).await?;
            Ok(format!("password reset for {user_id}; all its devices were logged out"))
        }
        Request::PurgeMedia { older_than_secs } => {
            let report = services.media.purge_older_than(Duration::from_secs(older_than_secs)).await?;
            Ok(format!("purged {} media ({} bytes of files freed)", report.media, report.bytes_freed))
        }
        Request::MakeAdmin { name, revoke } => {
            let user_id = services.accounts.set_admin_by_operator(&name, !revoke)?;
            Ok(if revoke {
                format!("{user_id} is no longer a server admin")
            } else {
                format!("{user_id} is a server admin")
            })
        }
        Request::RotateSigningKey => {
            let (old, new) = services.server_keys.rotate()?;
            Ok(format!(
                "the server now signs with {new}; {old} is published under old_verify_keys as expired"
            ))
        }
        Request::AppserviceList => Ok(appservice_lines(&services.appservice_admin.list())),
        Request::AppserviceAdd { text } => {
            let operator = RequestContext::internal(Actor::Operator, "appservice-add");
            let added = services.appservice_admin.register(&operator, &text)?;
            Ok(format!("registered {}", appservice_lines(&[added])))
        }
        Request::AppserviceRemove { id } => {
            let operator = RequestContext::internal(Actor::Operator, "appservice-remove");
            services.appservice_admin.remove(&operator, &id)?;
            Ok(format!("removed {id}: its token no longer works and nothing more is sent to it"))
        }
        Request::Backup { dir } => {
            // Last-seen times held in memory go into the copy too.
            services.devices.flush_last_seen()?;
            let backups = Arc::clone(&services.backups);
            let report = tokio::task::spawn_blocking(move || backups.create(&dir))
                .await
                .map_err(|e| Error::internal(format!("backup task: {e}")))??;
            Ok(format!(
                "backup written to {} ({} media files, {} bytes)",
                report.dir.display(),
                report.media_files,
                report.media_bytes
            ))
        }
    }
}

/// The listening socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listen at `path`, readable and writable by this process's user only. The socket is bound
/// under a temporary name, restricted, then renamed into place, so it is never reachable
/// with wider permissions; a socket left by a crashed server is replaced (the database lock
/// says no other server runs on this directory).
pub fn bind(path: &Path) -> std::io::Result<ControlSocket> {
    use std::os::unix::fs::PermissionsExt as _;
    let temp = path.with_file_name(format!("{SOCKET_NAME}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))?;
    if let Err(e) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(ControlSocket { listener, path: path.to_owned() })
}

/// Answer commands on `socket` until `stop` changes; then wait for the commands under way.
pub async fn serve(socket: ControlSocket, services: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    running.spawn(answer(stream, Arc::clone(&services)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(socket);
    while running.join_next().await.is_some() {}
}

async fn answer(stream: UnixStream, services: Arc<Services>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    let reply = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Reply { ok: false, message: "no request line in time".to_owned() },
        Ok(Err(e)) => Reply { ok: false, message: format!("cannot read the request: {e}") },
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Reply { ok: false, message: format!("not a command: {e}") },
            Ok(request) => {
                let what = command_name(&request);
                match execute(&services, request).await {
                    Ok(message) => {
                        tracing::info!(command = what, "operator command done over the control socket");
                        Reply { ok: true, message }
                    }
                    Err(e) => Reply { ok: false, message: e.to_string() },
                }
            }
        },
    };
    let mut text =
        serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false,\"message\":\"\"}".to_owned());
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
    let _ = write.shutdown().await;
}

fn command_name(request: &Request) -> &'static str {
    match request {
        Request::CreateUser { .. } => "create-user",
        Request::ResetPassword { .. } => "reset-password",
        Request::PurgeMedia { .. } => "purge-media",
        Request::MakeAdmin { .. } => "make-admin",
        Request::Backup { .. } => "backup",
        Request::RotateSigningKey => "rotate-signing-key",
        Request::AppserviceList => "appservice list",
        Request::AppserviceAdd { .. } => "appservice add",
        Request::AppserviceRemove { .. } => "appservice remove",
    }
}

/// Application services as the admin API describes them, a few lines each.
fn appservice_lines(entries: &[serde_json::Value]) -> String {
    if entries.is_empty() {
        return "no application services are registered".to_owned();
    }
    let text = |value: &serde_json::Value| value.as_str().map_or_else(|| value.to_string(), str::to_owned);
    let mut lines = Vec::new();
    for entry in entries {
        let source = match entry["source"].as_str() {
            Some("file") => format!("file {}", text(&entry["file"])),
            _ => "added at run time".to_owned(),
        };
        if entry["in_force"] == false {
            lines.push(format!(
                "{}: {source}, NOT IN FORCE: {}",
                text(&entry["id"]),
                text(&entry["problem"])
            ));
            continue;
        }
        let url = entry["url"].as_str().unwrap_or("none (receives nothing)");
        lines.push(format!(
            "{}: {source}; sender {}, url {url}, rate limited: {}",
            text(&entry["id"]),
            text(&entry["sender"]),
            entry["rate_limited"]
        ));
        for kind in ["users", "aliases", "rooms"] {
            for ns in entry["namespaces"][kind].as_array().into_iter().flatten() {
                let exclusive = if ns["exclusive"] == true { "exclusive" } else { "shared" };
                lines.push(format!("  {kind}: {} ({exclusive})", text(&ns["regex"])));
            }
        }
    }
    lines.join("\n")
}

/// Send `request` to the server listening at `path` and wait for its reply. `Ok(None)` when
/// no server listens there (no socket, or one left by a server that is gone).
pub async fn send(path: &Path, request: &Request) -> std::io::Result<Option<Reply>> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e)
            // No socket file, a stale one, or a path too long for a socket (then no server
            // could have bound it either).
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::InvalidInput
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(read).read_line(&mut answer).await?;
    serde_json::from_str(answer.trim_end())
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("the server's answer is not a reply ({e}): {answer:?}")))
}
