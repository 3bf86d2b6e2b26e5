//! The `conduit` binary: parse the command line, load the config, set up logging, then either
//! serve or run an operator command.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use conduit::{config::Config, server::Server, service::passwords::random_string};

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
    /// Create an account without opening registration. Stop the server first.
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
    /// Delete local media (and its thumbnails) uploaded longer ago than a given age. Stop the
    /// server first.
    PurgeMedia {
        /// The age, as a number and a unit: `90d`, `12h`, `30m` or `45s`.
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
    },
    /// Make an account a server admin (or, with `--revoke`, no longer one). Stop the server
    /// first; while it runs, admins use the admin API.
    MakeAdmin {
        /// The localpart or full user ID.
        name: String,
        /// Take the admin flag away instead.
        #[arg(long)]
        revoke: bool,
    },
    /// Set a new password for an account and log out all its devices. Stop the server first.
    ResetPassword {
        /// The localpart or full user ID.
        name: String,
        /// Read the password from this file (first line). Without it, one is generated and printed.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or(());
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

async fn run(cli: Cli) -> Result<(), String> {
    let loaded = Config::load(cli.config.as_deref())?;
    let config = loaded.config;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log))
        // Colour codes only for a terminal; the journal and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    for key in &loaded.unknown_keys {
        tracing::warn!(key = %key, "unknown configuration key ignored");
    }

    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let addr = std::net::SocketAddr::new(config.address, config.port);
            let server = Server::build(config).map_err(|e| e.to_string())?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            // The bound address, not the configured one: with port 0 the OS picks the port.
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(addr = %bound, "listening");
            server.run(listener, shutdown_signal()).await.map_err(|e| e.to_string())
        }
        Command::CreateUser { name, admin, password_file } => {
            let (password, generated) = read_password(password_file.as_ref())?;
            let server = Server::build(config).map_err(|e| e.to_string())?;
            let user_id = server
                .services()
                .accounts
                .create_user(&name, &password, admin)
                .await
                .map_err(|e| e.to_string())?;
            server.services().shutdown().map_err(|e| e.to_string())?;
            println!("created {user_id}{}", if admin { " (admin)" } else { "" });
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
        Command::PurgeMedia { older_than } => {
            let server = Server::build(config).map_err(|e| e.to_string())?;
            let report =
                server.services().media.purge_older_than(older_than).await.map_err(|e| e.to_string())?;
            server.services().shutdown().map_err(|e| e.to_string())?;
            println!("purged {} media ({} bytes of files freed)", report.media, report.bytes_freed);
            Ok(())
        }
        Command::MakeAdmin { name, revoke } => {
            let server = Server::build(config).map_err(|e| e.to_string())?;
            let user_id =
                server.services().accounts.set_admin_offline(&name, !revoke).map_err(|e| e.to_string())?;
            server.services().shutdown().map_err(|e| e.to_string())?;
            println!("{user_id} is {}a server admin", if revoke { "no longer " } else { "" });
            Ok(())
        }
        Command::ResetPassword { name, password_file } => {
            let (password, generated) = read_password(password_file.as_ref())?;
            let server = Server::build(config).map_err(|e| e.to_string())?;
            let user_id = server
                .services()
                .accounts
                .reset_password(&name, &password)
                .await
                .map_err(|e| e.to_string())?;
            server.services().shutdown().map_err(|e| e.to_string())?;
            println!("password reset for {user_id}; all its devices were logged out");
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
    }
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
