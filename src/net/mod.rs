//! The network edge below HTTP routing: binding the configured listeners (and the sockets
//! systemd passes by socket activation), TLS on them, accepting connections under the global
//! connection cap, and driving each connection with its timeouts (`conn`). It knows nothing
//! of routes: the server hands it one service per listener.

pub mod conn;
pub mod tls;
pub mod tunnel;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body::Body;
use hyper::{Request, Response};
use tokio::{net::TcpListener, sync::Semaphore, sync::watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::Service;

pub use self::{
    conn::{BodyTimedOut, TimedBody, Timeouts, is_body_timeout},
    tls::TlsReloader,
};
use crate::{
    Error, Result,
    config::{Config, ListenerConfig, ListenerResource},
};

/// What a listener serves when it is not configured (inherited sockets, a bound socket).
const CLIENT_AND_FEDERATION: &[ListenerResource] = &[ListenerResource::Client, ListenerResource::Federation];

/// Counters of the connection layer, read by the metrics at scrape time.
#[derive(Debug, Default)]

pub struct NetStats {
    /// Connections open now (all listeners).
    pub open: AtomicU64,
    /// Connections accepted since start.
    pub accepted: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because a request head took longer than the header timeout.
    pub header_timeouts: AtomicU64,
    /// Request bodies abandoned because they stalled past the body timeout.
    pub body_timeouts: AtomicU64,
    /// Connections closed after the keep-alive idle timeout.
    pub idle_closed: AtomicU64,
    /// TLS handshakes that failed or took longer than the header timeout.
    pub tls_handshake_failures: AtomicU64,
}

/// A bound listening socket and what it serves.
pub struct BoundListener {
    /// As configured (for an inherited socket: `client` and `federation`, no TLS).
    pub config: ListenerConfig,
    /// The address the socket is bound to (with the port the system chose for port 0).
    pub local_addr: SocketAddr,
    /// Passed by systemd rather than bound here.
    pub inherited: bool,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// Every listening socket of the server, bound before it serves.
pub struct Listeners {
    bound: Vec<BoundListener>,
    tls: TlsReloader,
}

impl Listeners {
    /// Bind the configured listeners (or the one of `address`/`port`), loading their TLS
    /// certificates, and take over the sockets systemd passed (`inherited`, from
    /// [`crate::config::systemd_listen_fds`]), which serve `client` and `federation`.
    /// With sockets passed and no `[[global.listeners]]` configured, only the passed
    /// sockets are used (the unit's `.socket` file says where to listen).
    pub async fn bind(config: &Config, inherited: &[i32]) -> Result<Self> {
        let mut listeners = Self { bound: Vec::new(), tls: TlsReloader::default() };
        let configured = if inherited.is_empty() || !config.listeners.is_empty() {
            config.effective_listeners()
        } else {
            Vec::new()
        };
        for listener_config in configured {
            let addr = SocketAddr::new(listener_config.address, listener_config.port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))?;
            listeners.add(listener, listener_config, false)?;
        }
        for &fd in inherited {
            let listener = inherited_listener(fd)?;
            let local = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
            let listener_config = ListenerConfig::plain(local.ip(), local.port(), CLIENT_AND_FEDERATION);
            listeners.add(listener, listener_config, true)?;
        }
        Ok(listeners)
    }

    /// One plain listener serving `client` and `federation` on a socket bound already.
    pub fn from_tcp(listener: TcpListener) -> Result<Self> {
        let local = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
        let mut listeners = Self { bound: Vec::new(), tls: TlsReloader::default() };
        let listener_config = ListenerConfig::plain(local.ip(), local.port(), CLIENT_AND_FEDERATION);
        listeners.add(listener, listener_config, false)?;
        Ok(listeners)
    }

    fn add(&mut self, listener: TcpListener, config: ListenerConfig, inherited: bool) -> Result<()> {
        let local_addr = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
        let tls = match (&config.tls_certificate_path, &config.tls_private_key_path) {
            (Some(cert), Some(key)) => {
                let cert = Arc::new(tls::ReloadableCert::load(cert, key).map_err(Error::internal)?);
                let acceptor = TlsAcceptor::from(cert.server_config().map_err(Error::internal)?);
                self.tls.push(cert);
                Some(acceptor)
            }
            _ => None,
        };
        self.bound.push(BoundListener { config, local_addr, inherited, listener, tls });
        Ok(())
    }

    /// The bound listeners, in configuration order (passed sockets last).
    pub fn iter(&self) -> impl Iterator<Item = &BoundListener> {
        self.bound.iter()
    }

    pub fn len(&self) -> usize {
        self.bound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// The handle that reloads every TLS listener's certificate (see
    /// [`TlsReloader::reload`]); keep it before the listeners are handed to the server.
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.clone()
    }
}

impl BoundListener {
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Take over a listening TCP socket passed as descriptor `fd`.
#[cfg(unix)]
fn inherited_listener(fd: i32) -> Result<TcpListener> {
    use std::os::fd::FromRawFd;
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let mut listening: libc::c_int = 0;
    let mut listening_len = len;
    // SAFETY: getsockopt writes at most `len` bytes into the integers given, and fails
    // harmlessly on a descriptor that is not a socket.
    let (typed, accepting) = unsafe {
        (
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut kind).cast(), &mut len),
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&raw mut listening).cast(),
                &mut listening_len,
            ),
        )
    };
    if typed != 0 || kind != libc::SOCK_STREAM || accepting != 0 || listening == 0 {
        return Err(Error::internal(format!(
            "socket activation passed descriptor {fd}, which is not a listening stream socket \
             (use ListenStream= in the .socket unit)"
        )));
    }
    // SAFETY: systemd passed us this descriptor for our own use; nothing else owns it.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    if std_listener.local_addr().is_err() {
        return Err(Error::internal(format!(
            "socket activation passed descriptor {fd}, which is not a TCP socket (Unix sockets \
             are not supported)"
        )));
    }
    std_listener.set_nonblocking(true).map_err(|e| Error::internal(format!("descriptor {fd}: {e}")))?;
    TcpListener::from_std(std_listener).map_err(|e| Error::internal(format!("descriptor {fd}: {e}")))
}

#[cfg(not(unix))]
fn inherited_listener(fd: i32) -> Result<TcpListener> {
    Err(Error::internal(format!("socket activation (descriptor {fd}) needs a Unix system")))
}

/// How connections are bounded.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub max_connections: usize,
    pub timeouts: Timeouts,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_connections: usize::try_from(config.max_connections).unwrap_or(usize::MAX),
            timeouts: Timeouts {
                header: config.request_header_timeout.as_duration(),
                body: config.request_body_timeout.as_duration(),
                keep_alive: config.keep_alive_timeout.as_duration(),
            },
        }
    }
}

/// After a failed accept (out of descriptors, mostly), the pause before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Serve every listener until `stop` turns true: each accepted connection gets
/// `make(listener index, peer address)` as its service. Then stop accepting, let each
/// connection finish the request it is answering, and return once all are closed.
pub async fn serve<S, B, F>(
    listeners: Listeners,
    settings: Settings,
    stats: Arc<NetStats>,
    make: F,
    stop: watch::Receiver<bool>,
) where
    F: Fn(usize, SocketAddr) -> S + Send + Sync + 'static,
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let make = Arc::new(make);
    let cap = Arc::new(Semaphore::new(settings.max_connections.min(Semaphore::MAX_PERMITS)));
    let connections = TaskTracker::new();
    let mut accepting = Vec::new();
    for (index, bound) in listeners.bound.into_iter().enumerate() {
        let task = accept_loop(
            index,
            bound,
            settings,
            Arc::clone(&stats),
            Arc::clone(&make),
            Arc::clone(&cap),
            connections.clone(),
            stop.clone(),
        );
        accepting.push(tokio::spawn(task));
    }
    for task in accepting {
        let _ = task.await;
    }
    connections.close();
    connections.wait().await;
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop<S, B, F>(
    index: usize,
    bound: BoundListener,
    settings: Settings,
    stats: Arc<NetStats>,
    make: Arc<F>,
    cap: Arc<Semaphore>,
    connections: TaskTracker,
    mut stop: watch::Receiver<bool>,
) where
    F: Fn(usize, SocketAddr) -> S + Send + Sync + 'static,
    S: Service<Request<TimedBody>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Monitoring must see an overloaded server: a metrics-only listener is not capped.
    let capped =
        bound.config.serves(ListenerResource::Client) || bound.config.serves(ListenerResource::Federation);
    let mut refusals_logged_at: Option<tokio::time::Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let accepted = tokio::select! {
            accepted = bound.listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = %bound.local_addr, error = %e, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let permit = if capped {
            match Arc::clone(&cap).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    // Closed at once: the client learns now (and a load balancer can try
                    // another server), and the kernel's accept queue keeps draining.
                    stats.refused.fetch_add(1, Ordering::Relaxed);
                    let now = tokio::time::Instant::now();
                    if refusals_logged_at.is_none_or(|at| now.duration_since(at) > Duration::from_secs(10)) {
                        refusals_logged_at = Some(now);
                        tracing::warn!(
                            max_connections = settings.max_connections,
                            "connection limit reached; closing new connections"
                        );
                    }
                    drop(stream);
                    continue;
                }
            }
        } else {
            None
        };
        let _ = stream.set_nodelay(true);
        let service = make(index, peer);
        let tls = bound.tls.clone();
        let stats = Arc::clone(&stats);
        let stop = stop.clone();
        connections.spawn(async move {
            stats.open.fetch_add(1, Ordering::Relaxed);
            match tls {
                None => conn::drive(stream, service, settings.timeouts, Arc::clone(&stats), stop).await,
                Some(acceptor) => {
                    // The handshake is bounded by the header timeout: it comes before any head.
                    match tokio::time::timeout(settings.timeouts.header, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            conn::drive(tls_stream, service, settings.timeouts, Arc::clone(&stats), stop)
                                .await;
                        }
                        Ok(Err(e)) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
