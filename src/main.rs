//! The `conduit` binary: parse the command line, load the config, set up logging, then either
//! serve or run an operator command.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use clap::{Parser, Subcommand};
use conduit::{
    config::Config,
    control,
    logging::{self, LogFilter},
    net::Listeners,
    reload::Reloader,
    server::Server,
    service::{
        audit::{self, Audit},
        context::{Actor, RequestContext},
        passwords::random_string,
    },
    systemd::Notifier,
};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// A Matrix homeserver for companies that host their own chat.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Path to conduit.toml. Without one, defaults apply (server_name localhost, ./data,
    /// 127.0.0.1:6167); CONDUIT_<KEY> variables override either way.
    #[arg(long, short, env = "CONDUIT_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the homeserver (the default).
    Serve,
    /// Create an account without opening registration. Sent to the running server, or done on
    /// the database when none runs.
    CreateUser {
        /// The localpart of the new account, e.g. `alice`.
        name: String,
        /// Make the account a server admin.
        #[arg(long)]
        admin: bool,
        /// Read the password from this file (first line). Without it, one is generated and printed.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Delete local media (and its thumbnails) uploaded longer ago than a given age.
    PurgeMedia {
        /// The age, as a number and a unit: `90d`, `12h`, `30m` or `45s`.
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
    },
    /// Set a new password for an account and log out all its devices.
    ResetPassword {
        /// The localpart or full user ID.
        name: String,
        /// Read the password from this file (first line). Without it, one is generated and printed.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Make an account a server admin (admin API, admin tools in clients).
    MakeAdmin {
        /// The localpart or full user ID.
        name: String,
        /// Take the admin flag away instead.
        #[arg(long)]
        revoke: bool,
    },
    /// Replace the server's signing key (federation): a new key signs from now on, and the
    /// old one is published under `old_verify_keys` with the time it stopped being used.
    /// Sent to the running server, or done on the database when none runs.
    RotateSigningKey,
    /// Write a consistent copy of the database and media into DIR (new or empty), which a
    /// server with `database_path = DIR` serves as it is. Works while the server runs.
    Backup {
        /// Where to write the backup; the running server writes it, so its user must be able
        /// to create it.
        dir: PathBuf,
    },
    /// Copy the whole database to another storage backend (RocksDB to PostgreSQL), table by
    /// table with progress, each table verified by its row count and a SHA-256 of its keys
    /// and values. Stop the server first. An interrupted copy goes on with `--resume`.
    MigrateDb {
        /// The database to copy: `rocksdb:PATH` (the server's `database_path`).
        #[arg(long)]
        from: conduit::storage::copy::Location,
        /// Where to copy it: `postgresql:URL` (e.g. `postgresql:postgresql://conduit@db/conduit`).
        #[arg(long)]
        to: conduit::storage::copy::Location,
        /// Go on with an interrupted copy into a target that already holds part of it.
        #[arg(long)]
        resume: bool,
    },
    /// Application service registrations: list those in force, check a file (without the
    /// server), register one or remove one added that way, without a restart (sent to the
    /// running server, or done on the database when none runs).
    Appservice {
        #[command(subcommand)]
        action: AppserviceAction,
    },
}

#[derive(Subcommand)]
enum AppserviceAction {
    /// Show every registration in force (from `app_service_config_files` and added at run
    /// time) and those added at run time that are not.
    List,
    /// Read one registration file and say what is wrong with it, field by field.
    Check {
        /// The registration file (YAML).
        file: PathBuf,
    },
    /// Register the appservice a registration file describes, stored in the database and in
    /// force at once (as the admin API's `POST /_conduit/admin/v1/appservices`).
    Add {
        /// The registration file (YAML or JSON).
        file: PathBuf,
    },
    /// Remove an appservice registered with `add` (or the admin API): its token stops
    /// working at once.
    Remove {
        /// Its `id`.
        id: String,
    },
}

/// `conduit appservice …`: `check` reads a registration file as the server would, here and
/// now; the other actions are operator commands for the server.
fn appservice_request(config: &Config, action: AppserviceAction) -> Result<Option<control::Request>, String> {
    let file = match action {
        AppserviceAction::List => return Ok(Some(control::Request::AppserviceList)),
        AppserviceAction::Add { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            return Ok(Some(control::Request::AppserviceAdd { text }));
        }
        AppserviceAction::Remove { id } => return Ok(Some(control::Request::AppserviceRemove { id })),
        AppserviceAction::Check { file } => file,
    };
    let r = conduit::service::appservices::load_file(&file, &config.server_name)?;
    let url = r.url.as_ref().map_or_else(|| "none (receives nothing)".to_owned(), ToString::to_string);
    println!("{}: sender {}, url {url}, rate limited: {}", r.id, r.sender, r.rate_limited);
    for (kind, list) in [("users", &r.users), ("aliases", &r.aliases), ("rooms", &r.rooms)] {
        for ns in list {
            let exclusive = if ns.exclusive { "exclusive" } else { "shared" };
            println!("  {kind}: {} ({exclusive})", ns.pattern);
        }
    }
    Ok(None)
}

/// `conduit migrate-db`: copy and verify, telling each table's progress on stdout.
fn migrate_db(
    from: &conduit::storage::copy::Location,
    to: &conduit::storage::copy::Location,
    resume: bool,
    pool_size: usize,
) -> Result<(), String> {
    use conduit::storage::{copy, tables::ALL_TABLES};
    if from == to {
        return Err("--from and --to name the same database".into());
    }
    let source = copy::open_location(from, pool_size).map_err(|e| format!("opening {from:?}: {e}"))?;
    let target = copy::open_location(to, pool_size).map_err(|e| format!("opening {to:?}: {e}"))?;
    let started = std::time::Instant::now();
    let report =
        copy::copy_database(source.as_ref(), target.as_ref(), ALL_TABLES, resume, &mut |event| match event {
            copy::CopyEvent::Table { name, resumed: true } => {
                println!("{name}: resuming after the rows already copied")
            }
            copy::CopyEvent::Table { .. } => {}
            copy::CopyEvent::Progress { name, rows } if rows > 0 => println!("{name}: {rows} rows copied"),
            copy::CopyEvent::Progress { .. } => {}
            copy::CopyEvent::Verified { name, rows, sha256 } => {
                println!("{name}: verified, {rows} rows, sha256 {sha256}")
            }
        })
        .map_err(|e| e.to_string())?;
    let rows: u64 = report.iter().map(|t| t.rows).sum();
    println!(
        "copied and verified {} tables, {rows} rows, in {:.1} s",
        report.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `<number><unit>` with unit `d`, `h`, `m` or `s`.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("`{text}` does not start with a number"))?;
    let unit_secs: u64 = match unit {
        "d" => 86400,
        "h" => 3600,
        "m" => 60,
        "s" => 1,
        _ => return Err(format!("`{text}`: the unit must be d, h, m or s (e.g. 30d)")),
    };
    number
        .checked_mul(unit_secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long an age"))
}

fn read_password(file: Option<&PathBuf>) -> Result<(String, bool), String> {
    match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let password = text.lines().next().unwrap_or("").to_owned();
            if password.is_empty() {
                return Err(format!("{} holds no password", path.display()));
            }
            Ok((password, false))
        }
        None => Ok((random_string(24), true)),
    }
}

/// Resolves at SIGTERM (or Ctrl-C), after telling systemd the server is stopping.
async fn shutdown_signal(mut term: Signal, notifier: Notifier) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    notifier.stopping();
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// Reload the configuration at every SIGHUP (`systemctl reload`): read it again as start-up
/// did and hand it to the live-reloadable parts; systemd hears `RELOADING=1`, then `READY=1`
/// with the outcome. A rejected configuration leaves the running one in place.
async fn reload_on_sighup(
    mut hup: Signal,
    reloader: Arc<Reloader>,
    path: Option<PathBuf>,
    notifier: Notifier,
    audit: Arc<Audit>,
) {
    let operator = RequestContext::internal(Actor::Operator, "SIGHUP");
    while hup.recv().await.is_some() {
        notifier.reloading();
        tracing::info!("SIGHUP: reloading the configuration");
        match reloader.reload_from(path.as_deref()).await {
            Ok(report) => {
                tracing::info!(applied = ?report.applied, "configuration reloaded");
                if !report.needs_restart.is_empty() {
                    tracing::warn!(
                        keys = ?report.needs_restart,
                        "changed configuration keys need a restart to take effect"
                    );
                }
                let entry = audit::Entry::success("config.reload").params(serde_json::json!({
                    "applied": report.applied,
                    "needs_restart": report.needs_restart,
                }));
                audit.record_or_log(&operator, entry);
                notifier.ready("Configuration reloaded");
            }
            Err(reason) => {
                tracing::error!(reason = %reason, "configuration rejected; the running one is kept");
                let entry =
                    audit::Entry::failure("config.reload").params(serde_json::json!({ "reason": reason }));
                audit.record_or_log(&operator, entry);
                notifier.ready(&format!("Configuration rejected: {reason}"));
            }
        }
    }
}

/// An operator command: sent to the running server through its control socket, or, when no
/// server answers there, run here on the database.
async fn operator_command(config: Config, request: control::Request) -> Result<String, String> {
    let socket = control::socket_path(&config);
    match control::send(&socket, &request).await {
        Ok(Some(reply)) if reply.ok => return Ok(reply.message),
        Ok(Some(reply)) => return Err(reply.message),
        Ok(None) => {}
        Err(e) => {
            return Err(format!(
                "cannot talk to the running server at {}: {e} (run this as the server's user or root)",
                socket.display()
            ));
        }
    }
    let server = Server::build(config).map_err(|e| e.to_string())?;
    let result = control::execute(server.services(), request).await.map_err(|e| e.to_string());
    server.services().shutdown().map_err(|e| e.to_string())?;
    result
}

async fn run(cli: Cli) -> Result<(), String> {
    // Taken (and the variables removed) first, before anything else reads the environment.
    #[cfg(unix)]
    let inherited_sockets = conduit::config::systemd_listen_fds();
    #[cfg(not(unix))]
    let inherited_sockets: Vec<i32> = Vec::new();
    let loaded = Config::load(cli.config.as_deref())?;
    let config = loaded.config;
    let log_filter = logging::init(&config.log);
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, "unknown configuration key ignored");
    }

    let request = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => return serve(config, log_filter, cli.config, inherited_sockets).await,
        Command::CreateUser { name, admin, password_file } => {
            let (password, generated) = read_password(password_file.as_ref())?;
            let message = operator_command(
                config,
                control::Request::CreateUser { name, password: password.clone(), admin },
            )
            .await?;
            println!("{message}");
            if generated {
                println!("password: {password}");
            }
            return Ok(());
        }
        Command::ResetPassword { name, password_file } => {
            let (password, generated) = read_password(password_file.as_ref())?;
            let message = operator_command(
                config,
                control::Request::ResetPassword { name, password: password.clone() },
            )
            .await?;
            println!("{message}");
            if generated {
                println!("password: {password}");
            }
            return Ok(());
        }
        Command::PurgeMedia { older_than } => {
            control::Request::PurgeMedia { older_than_secs: older_than.as_secs() }
        }
        Command::MakeAdmin { name, revoke } => control::Request::MakeAdmin { name, revoke },
        Command::RotateSigningKey => control::Request::RotateSigningKey,
        Command::Appservice { action } => match appservice_request(&config, action)? {
            Some(request) => request,
            None => return Ok(()),
        },
        Command::MigrateDb { from, to, resume } => {
            let pool_size = config.database_pool_size as usize;
            return tokio::task::spawn_blocking(move || migrate_db(&from, &to, resume, pool_size))
                .await
                .map_err(|e| format!("the copy stopped: {e}"))?;
        }
        Command::Backup { dir } => {
            // The server resolves paths from its own working directory: send an absolute one.
            let dir = std::path::absolute(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            control::Request::Backup { dir }
        }
    };
    println!("{}", operator_command(config, request).await?);
    Ok(())
}

/// Open the database (telling systemd start-up is still under way), bind, tell systemd the
/// server is ready, serve until SIGTERM.
async fn serve(
    config: Config,
    log_filter: LogFilter,
    config_path: Option<PathBuf>,
    inherited_sockets: Vec<i32>,
) -> Result<(), String> {
    let notifier = Notifier::from_env();
    let server = notifier
        .extend_timeout_while("Opening the database", move || Server::build(config))
        .await
        .map_err(|e| e.to_string())?;
    server.reloader().register(Arc::new(log_filter));
    let listeners =
        Listeners::bind(&server.services().config, &inherited_sockets).await.map_err(|e| e.to_string())?;
    // Certificates are re-read at every reload.
    server.reloader().register(Arc::new(listeners.tls_reloader()));
    let bound: Vec<String> = listeners.iter().map(|l| l.local_addr.to_string()).collect();

    // Both handlers are in place before systemd hears READY=1: until a handler is installed,
    // SIGHUP and SIGTERM would end the process.
    let term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let hup = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let audit = Arc::clone(&server.services().audit);
    let reloads =
        tokio::spawn(reload_on_sighup(hup, Arc::clone(server.reloader()), config_path, notifier, audit));
    let watchdog = notifier.spawn_watchdog();
    // The listeners are bound and the database open: connections are queued from here on,
    // and served as soon as `serve` starts.
    notifier.ready(&format!("Serving on {}", bound.join(", ")));
    let served = server.serve(listeners, shutdown_signal(term, notifier)).await.map_err(|e| e.to_string());
    reloads.abort();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    served
}

#[tokio::main]
async fn main() -> ExitCode {
    return_large_allocations_to_the_os();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("conduit: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Each password hash allocates argon2's working memory (19 MiB by default) and frees it.
/// glibc raises its mmap threshold after such a free, so later blocks come from per-thread
/// arenas and stay resident: fifty logins left ~400 MiB behind. A fixed threshold keeps
/// large blocks mmapped and returned on free (measured: 26 MiB after the same logins).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_allocations_to_the_os() {
    // SAFETY: mallopt only changes allocator tuning and takes the allocator's own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations_to_the_os() {}
