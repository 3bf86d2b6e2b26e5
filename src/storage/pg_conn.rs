//! PostgreSQL connections driven by the thread that uses them, and their pool.
//!
//! The store's trait is synchronous and tokio-postgres is asynchronous. Handing every query
//! to a runtime of the store's own, and the answer back, costs thread wake-ups on the way
//! there and on the way back, on a machine whose cores the database shares: in the profile
//! in docs/benchmarks.md, reads that PostgreSQL executed in 5–40 µs followed each other
//! about 0.2 ms apart. Here a connection owns a current-thread tokio runtime whose reactor
//! holds its socket, and the caller polls the connection's I/O and its query together in
//! that runtime's `block_on`: it writes the query itself and sleeps in `epoll` until the
//! answer arrives. A connection is polled only while it is in use; between uses nothing
//! reads its socket, which these connections do not need (the store's session connection,
//! which listens to the bus, stays on the store's runtime).
//!
//! Callers on a tokio worker leave it first ([`blocking`]), as they did before.

use std::{
    collections::HashMap,
    future::Future,
    ops::Deref,
    pin::Pin,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio_postgres::{Client, NoTls, Statement};

use super::kv::StorageError;

/// A failure inside the backend: the database's own (which may be a conflict worth
/// retrying) or any other.
pub(super) enum PgError {
    Db(tokio_postgres::Error),
    Other(StorageError),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Db(e)
    }
}

impl From<StorageError> for PgError {
    fn from(e: StorageError) -> Self {
        PgError::Other(e)
    }
}

/// A connection's client, with the statements prepared on it.
pub(super) struct PgClient {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
}

impl PgClient {
    /// `sql` prepared on this connection: a round trip the first time, none after.
    pub(super) async fn prepare_cached(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements().insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn statements(&self) -> MutexGuard<'_, HashMap<String, Statement>> {
        self.statements.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Deref for PgClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// What drives a connection's socket.
type Io = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// One connection, with the runtime whose reactor holds its socket.
pub(super) struct Conn {
    client: Arc<PgClient>,
    io: Io,
    /// Taken out on drop and shut down without waiting: a connection may be dropped on a
    /// tokio worker, where dropping a runtime would panic.
    runtime: Option<tokio::runtime::Runtime>,
    /// Its I/O ended or it was left in an unknown state: never used again.
    broken: bool,
}

impl Conn {
    fn open(config: &tokio_postgres::Config, timeout: Duration) -> Result<Self, PgError> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            StorageError::Backend(format!("cannot start a database connection's runtime: {e}"))
        })?;
        let connected =
            runtime.block_on(async { tokio::time::timeout(timeout, config.connect(NoTls)).await });
        let (client, connection) = match connected {
            Ok(made) => made?,
            Err(_) => {
                runtime.shutdown_background();
                return Err(PgError::Other(StorageError::Backend(format!(
                    "postgresql: no connection to the database within {} s",
                    timeout.as_secs()
                ))));
            }
        };
        Ok(Self {
            client: Arc::new(PgClient { client, statements: Mutex::default() }),
            io: Box::pin(connection),
            runtime: Some(runtime),
            broken: false,
        })
    }

    /// Run `query` on this connection, polling its I/O on this thread meanwhile. Not on a
    /// tokio worker: see [`blocking`].
    pub(super) fn run<T, F>(&mut self, query: impl FnOnce(Arc<PgClient>) -> F) -> Result<T, PgError>
    where
        F: Future<Output = Result<T, PgError>>,
    {
        let Some(runtime) = &self.runtime else {
            return Err(PgError::Other(StorageError::Backend("the database connection was closed".into())));
        };
        if self.broken {
            return Err(PgError::Other(StorageError::Backend("the database connection ended".into())));
        }
        let work = query(Arc::clone(&self.client));
        let io = &mut self.io;
        let outcome = runtime.block_on(async move {
            tokio::pin!(work);
            tokio::select! {
                biased;
                answer = &mut work => Ok(answer),
                ended = io => Err(ended),
            }
        });
        match outcome {
            Ok(answer) => answer,
            Err(ended) => {
                // The I/O future is done and must not be polled again.
                self.broken = true;
                Err(match ended {
                    Err(e) => PgError::Db(e),
                    Ok(()) => {
                        PgError::Other(StorageError::Backend("the database closed the connection".into()))
                    }
                })
            }
        }
    }

    /// Never hand this connection out again (its state is unknown).
    pub(super) fn discard(&mut self) {
        self.broken = true;
    }

    fn usable(&self) -> bool {
        !self.broken && !self.client.is_closed()
    }

    /// Whether the connection is still up, as far as its socket tells without waiting: an
    /// idle connection is not polled, so one whose server went away (a database restart)
    /// would otherwise be found out only by the query sent on it.
    fn alive(&mut self) -> bool {
        if !self.usable() {
            return false;
        }
        let Some(runtime) = &self.runtime else { return false };
        let io = &mut self.io;
        let ended = runtime.block_on(async move {
            // Yielding once lets the runtime read the socket's readiness first.
            tokio::task::yield_now().await;
            std::future::poll_fn(|cx| std::task::Poll::Ready(io.as_mut().poll(cx).is_ready())).await
        });
        if ended {
            self.broken = true;
        }
        !ended
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The socket first, while its runtime is still there.
        drop(std::mem::replace(&mut self.io, Box::pin(std::future::pending())));
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Connections to one database, made when needed up to `max`.
pub(super) struct ConnPool {
    config: tokio_postgres::Config,
    max: usize,
    /// How long a caller waits for a free connection.
    wait: Duration,
    connect_timeout: Duration,
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    /// Connections made and not yet dropped (idle or in use), and ones being made.
    open: usize,
}

impl ConnPool {
    pub(super) fn new(
        config: tokio_postgres::Config,
        max: usize,
        wait: Duration,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            config,
            max: max.max(1),
            wait,
            connect_timeout,
            state: Mutex::default(),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection: an idle one, a new one while fewer than `max` are open, or the next
    /// one given back (waiting `wait` at most).
    pub(super) fn get(self: &Arc<Self>) -> Result<Pooled, PgError> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.lock();
        loop {
            while let Some(mut conn) = state.idle.pop() {
                if conn.alive() {
                    return Ok(Pooled { conn: Some(conn), pool: Arc::clone(self) });
                }
                state.open -= 1;
            }
            if state.open < self.max {
                state.open += 1;
                drop(state);
                return match Conn::open(&self.config, self.connect_timeout) {
                    Ok(conn) => Ok(Pooled { conn: Some(conn), pool: Arc::clone(self) }),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PgError::Other(StorageError::Backend(format!(
                    "postgresql: no connection to the database: all {} were busy for {} s",
                    self.max,
                    self.wait.as_secs()
                ))));
            }
            state = self.freed.wait_timeout(state, deadline - now).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    fn give_back(&self, conn: Conn) {
        let mut state = self.lock();
        if conn.usable() {
            state.idle.push(conn);
        } else {
            state.open -= 1;
            drop(state);
            drop(conn);
        }
        self.freed.notify_one();
    }
}

/// A connection taken from a pool; given back when dropped.
pub(super) struct Pooled {
    conn: Option<Conn>,
    pool: Arc<ConnPool>,
}

impl Pooled {
    pub(super) fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a pooled connection is held until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

/// Run `f`, which blocks on a connection, from wherever the store is called: on a worker of
/// a multi-threaded tokio runtime it tells the runtime first (`block_in_place`), so other
/// tasks move to another thread; inside a current-thread runtime, where neither that nor
/// starting a connection's runtime is allowed, on a thread of its own; elsewhere directly.
pub(super) fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(f).join() {
            Ok(answer) => answer,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
        Err(_) => f(),
    }
}
