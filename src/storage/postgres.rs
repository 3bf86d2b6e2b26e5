//! The PostgreSQL backend: one table of `bytea` keys and values per catalogue table, for
//! operators who run conduit on a database their team already replicates and backs up.
//!
//! The trait is synchronous and the client is asynchronous. A caller drives the connection
//! it uses itself, its query and the connection's I/O polled together on its own thread
//! (`pg_conn`), after telling its runtime when it is a tokio worker (`block_in_place`), so
//! no worker queues behind the network. The store's small runtime of its own (two threads)
//! drives only the session connection, which holds the process lock and listens to the
//! message bus.
//!
//! Every write is a SERIALIZABLE transaction, blind writes included: PostgreSQL checks a
//! serializable reader's reads only against serializable writers, so a blind write at a
//! weaker level could slip between a transaction's check and its commit. A transaction that
//! loses a serialization conflict (SQLSTATE 40001, or a deadlock, 40P01) is rolled back and
//! run again from the start, which is what [`KvStore::transact`] promises its bodies.
//!
//! Connections come from two pools: transactions take theirs from one, every other call from
//! the other. A transaction's body may call the store (a plain read) while it holds its own
//! connection; with one pool, as many such bodies as there are connections would each wait
//! for a second connection that none gives back. Plain calls never wait for a second
//! connection, so their pool always drains.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::Future,
    ops::Bound,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio_postgres::{NoTls, error::SqlState, types::ToSql};

use super::{
    kv::{
        BusMessage, Direction, Durability, KeyRange, KvStore, RawEntry, SEQUENCES_TABLE, StorageError,
        StorageResult, StoreStats, TableStats, Transaction, WriteBatch, WriteOp, sequence_key,
    },
    pg_conn::{Conn, ConnPool, PgClient, PgError, Pooled, blocking},
    tables::TableInfo,
};

/// How to reach the database.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// A libpq-style URL or key-value string (`postgresql://user:pass@host:5432/db`).
    pub url: String,
    /// Connections in all, split between transactions and other calls (at least 2).
    pub pool_size: usize,
    /// PostgreSQL's `statement_timeout` for every statement, when set.
    pub statement_timeout_ms: Option<u64>,
    /// Whether other conduit processes may share the database (`multi_process`): the
    /// process lock is then taken shared, and the message bus listens.
    pub multi_process: bool,
}

/// Runs of a transaction (or a blind write) before a conflict that never clears is reported.
const MAX_ATTEMPTS: usize = 1_000;
/// Rows fetched by the first page of a scan (many scans read one row), and the largest page.
const FIRST_PAGE: usize = 32;
const MAX_PAGE: usize = 1024;
/// The advisory lock key under which schema set-up and migrations run ("conduit!").
const SCHEMA_LOCK: i64 = 0x636f_6e64_7569_7421;
/// The advisory lock every conduit process serving a database holds for its life, on its
/// session connection ("conduit."): exclusively when it holds the database alone, shared
/// when processes share it, so neither kind starts beside the other.
const PROCESS_LOCK: i64 = 0x636f_6e64_7569_742e;
/// The high half of the advisory lock keys of roles (`KvStore::lead`, "lead"); the low half
/// is a hash of the role's name.
const ROLE_LOCKS: i64 = 0x6c65_6164 << 32;
/// How long start-up waits for the process lock (a process that just stopped may still
/// hold it for a moment while the database notices its connection closed).
const PROCESS_LOCK_WAIT: Duration = Duration::from_secs(5);
/// The largest bus payload (PostgreSQL takes NOTIFY payloads under 8000 bytes, and these
/// travel in hex).
pub const MAX_PAYLOAD: usize = 3_900;
/// The NOTIFY channel of the message bus.
const BUS_CHANNEL: &str = "conduit_bus";
/// What the application name of a sharing process's connections starts with (its member id
/// follows, in hex): how `live_members` sees who is connected.
const MEMBER_PREFIX: &str = "conduit-";
/// How long the session connection waits before it is made again after being lost.
const SESSION_RETRY: Duration = Duration::from_secs(1);
/// How long a caller waits for a free connection, and for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may go without an answer from the database host before the
/// kernel ends it (see `connect`).
const PARTITION_LIMIT: Duration = Duration::from_secs(20);

/// The PostgreSQL table holding catalogue table `name`.
fn sql_table(name: &str) -> String {
    format!("\"kv_{name}\"")
}

impl PgError {
    fn retryable(&self) -> bool {
        match self {
            PgError::Db(e) => {
                matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED)
            }
            PgError::Other(_) => false,
        }
    }

    fn into_storage(self) -> StorageError {
        match self {
            PgError::Db(e) => StorageError::Backend(describe(&e)),
            PgError::Other(e) => e,
        }
    }
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgresql: {} ({})", db.message(), db.code().code()),
        None => {
            let mut text = format!("postgresql: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// Operation counters for the metrics.
#[derive(Default)]
struct Counts {
    gets: AtomicU64,
    multi_get_keys: AtomicU64,
    scans: AtomicU64,
    synced_writes: AtomicU64,
    buffered_writes: AtomicU64,
    written_bytes: AtomicU64,
    syncs: AtomicU64,
    requests: AtomicU64,
}

/// Which buffered commits of this process are known to be durable. Buffered commits are
/// numbered as they return; a synchronous commit (a `sync`, or a synced write) flushes the
/// write-ahead log up to its own record, so every buffered commit that returned before it
/// began is durable once it returns.
#[derive(Default)]
struct Flushed {
    /// Buffered commits returned so far.
    buffered: AtomicU64,
    /// How many of them (the first so many) are durable.
    durable: AtomicU64,
}

impl Flushed {
    /// Note a buffered commit that has returned.
    fn buffered_committed(&self) {
        self.buffered.fetch_add(1, Ordering::SeqCst);
    }

    /// The mark to pass to [`Self::synced`] once a synchronous commit beginning now returns.
    fn mark(&self) -> u64 {
        self.buffered.load(Ordering::SeqCst)
    }

    fn synced(&self, mark: u64) {
        self.durable.fetch_max(mark, Ordering::SeqCst);
    }

    /// Whether every buffered commit that returned so far is durable.
    fn all_durable(&self) -> bool {
        self.durable.load(Ordering::SeqCst) >= self.buffered.load(Ordering::SeqCst)
    }
}

/// The session connection as callers see it: its client while it is up, and the roles
/// (advisory locks) taken on it, which end with it.
#[derive(Default)]
struct SessionSlot {
    client: Option<Arc<tokio_postgres::Client>>,
    roles: HashSet<i64>,
    /// Session connections made so far (the bus's generation).
    connections: u64,
}

impl SessionSlot {
    /// The connection ended: the roles went with it.
    fn ended(&mut self) {
        self.client = None;
        self.roles.clear();
    }
}

/// The advisory lock key of role `role` (FNV-1a of its name in the low half).
fn role_key(role: &str) -> i64 {
    let hash = role.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    ROLE_LOCKS | i64::from(hash)
}

/// What the store's calls share.
struct Shared {
    /// Connections for plain calls, and for transactions.
    plain: Arc<ConnPool>,
    txns: Arc<ConnPool>,
    /// The catalogue tables this store holds.
    tables: HashSet<&'static str>,
}

impl Shared {
    fn check_table(&self, table: &'static str) -> Result<(), PgError> {
        if self.tables.contains(table) {
            Ok(())
        } else {
            Err(PgError::Other(StorageError::UnknownTable(table.to_owned())))
        }
    }
}

/// A PostgreSQL database holding the given tables.
pub struct PgStore {
    shared: Arc<Shared>,
    /// This process's id among those sharing the database (`multi_process`).
    member: Option<u64>,
    /// What the session connection hears on the bus.
    bus: tokio::sync::broadcast::Sender<BusMessage>,
    /// Asks the session connection to close (on drop).
    stop_session: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>>,
    /// The session connection's client and the roles held on it.
    session: Arc<std::sync::Mutex<SessionSlot>>,
    /// Taken out on drop, and shut down without waiting (dropping a runtime inside another
    /// would panic).
    runtime: Option<tokio::runtime::Runtime>,
    counts: Counts,
    flushed: Flushed,
    order: Vec<&'static str>,
}

impl PgStore {
    /// Connect, create any missing table and hand the store to `prepare` (the schema
    /// migrations) while holding the schema advisory lock, so that several processes
    /// starting together set the schema up once.
    pub fn open_with(
        options: &PgOptions,
        tables: &[TableInfo],
        prepare: impl FnOnce(&Arc<dyn KvStore>) -> StorageResult<()>,
    ) -> StorageResult<Arc<dyn KvStore>> {
        let store = Arc::new(Self::connect(options, tables)?);
        let names: Vec<&'static str> = tables.iter().map(|t| t.name).collect();
        // The schema lock is taken on a connection held until the migrations are done.
        let mut lock = blocking(|| {
            let mut lock = store.shared.plain.get()?;
            lock.conn().run(|client| async move {
                client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK]).await?;
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS conduit_sync (id int PRIMARY KEY, n bigint NOT NULL); \
                         INSERT INTO conduit_sync VALUES (1, 0) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                for name in names {
                    client
                        .batch_execute(&format!(
                            "CREATE TABLE IF NOT EXISTS {} (k bytea PRIMARY KEY, v bytea NOT NULL)",
                            sql_table(name)
                        ))
                        .await?;
                }
                Ok::<_, PgError>(())
            })?;
            Ok::<_, PgError>(lock)
        })
        .map_err(PgError::into_storage)?;
        let dyn_store: Arc<dyn KvStore> = Arc::clone(&store) as Arc<dyn KvStore>;
        let prepared = prepare(&dyn_store);
        // The lock is the session's: unlocking (or the connection closing) releases it.
        let unlocked = blocking(|| {
            lock.conn().run(|client| async move {
                client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK]).await?;
                Ok::<(), PgError>(())
            })
        })
        .map_err(PgError::into_storage);
        drop(lock);
        prepared?;
        unlocked?;
        Ok(dyn_store)
    }

    /// Connect to the database without touching its schema.
    pub fn connect(options: &PgOptions, tables: &[TableInfo]) -> StorageResult<Self> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StorageError::Backend(format!("database_url is not a PostgreSQL URL: {e}")))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // A database host that vanishes without closing its connections (a network
        // partition, a powered-off host) leaves queries waiting for ever on the kernel's
        // defaults (keepalives after two hours). Unless the URL says otherwise, unanswered
        // data ends a connection after PARTITION_LIMIT and an idle one is probed, so the
        // process gives errors (and answers `/_conduit/ready` with 503) rather than waits.
        if !options.url.contains("tcp_user_timeout") {
            config.tcp_user_timeout(PARTITION_LIMIT);
        }
        if !options.url.contains("keepalives") {
            config.keepalives(true);
            config.keepalives_idle(PARTITION_LIMIT / 2);
            config.keepalives_interval(PARTITION_LIMIT / 10);
            config.keepalives_retries(5);
        }
        let member = options.multi_process.then(|| rand::random::<u64>() >> 1);
        match member {
            Some(id) => config.application_name(format!("{MEMBER_PREFIX}{id:x}")),
            None => config.application_name("conduit"),
        };
        if let Some(ms) = options.statement_timeout_ms {
            config.options(format!("-c statement_timeout={ms}"));
        }
        for t in tables {
            if !t.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(StorageError::Backend(format!(
                    "table name `{}` is not a plain identifier",
                    t.name
                )));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("conduit-postgres")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Backend(format!("cannot start the database runtime: {e}")))?;
        let size = options.pool_size.max(2);
        let txn_size = (size / 2).max(1);
        let make_pool = |max: usize| Arc::new(ConnPool::new(config.clone(), max, POOL_WAIT, CONNECT_TIMEOUT));
        let shared = Arc::new(Shared {
            plain: make_pool(size - txn_size),
            txns: make_pool(txn_size),
            tables: tables.iter().map(|t| t.name).collect(),
        });
        let session_config = config.clone();
        let store = Self {
            shared,
            member,
            bus: tokio::sync::broadcast::channel(BUS_BACKLOG).0,
            stop_session: None,
            session: Arc::default(),
            runtime: Some(runtime),
            counts: Counts::default(),
            flushed: Flushed::default(),
            order: tables.iter().map(|t| t.name).collect(),
        };
        // Fail now, with the reason, if the database cannot be reached.
        store.on_plain(|client| async move {
            client.batch_execute("SELECT 1").await?;
            Ok::<(), PgError>(())
        })?;
        // The process lock, held for the store's life by a connection of its own.
        let (started, first) = tokio::sync::oneshot::channel();
        let (stop_tx, stop) = tokio::sync::mpsc::channel(1);
        let session = Session {
            config: session_config,
            multi_process: options.multi_process,
            bus: store.bus.clone(),
            stop,
            slot: Arc::clone(&store.session),
        };
        let mut store = store;
        store.stop_session = Some(stop_tx);
        store.block_on(async move {
            tokio::spawn(session.run(started));
            first.await.unwrap_or_else(|_| {
                Err(PgError::Other(StorageError::Backend("the session connection stopped".into())))
            })
        })?;
        Ok(store)
    }

    /// Run `query` on a connection of the plain pool, driven by this thread, and count it.
    fn on_plain<T: Send, F>(&self, query: impl FnOnce(Arc<PgClient>) -> F + Send) -> StorageResult<T>
    where
        F: Future<Output = Result<T, PgError>>,
    {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        let pool = &self.shared.plain;
        blocking(|| pool.get()?.conn().run(query)).map_err(PgError::into_storage)
    }

    /// Run `future` on the store's runtime and wait for its answer, and count it (the
    /// calls on the session connection).
    fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> StorageResult<T> {
        self.counts.requests.fetch_add(1, Ordering::Relaxed);
        self.block_on_uncounted(future).map_err(PgError::into_storage)
    }

    fn block_on_uncounted<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, PgError>> + Send + 'static,
    ) -> Result<T, PgError> {
        let Some(runtime) = &self.runtime else {
            return Err(PgError::Other(StorageError::Backend("the database runtime has stopped".into())));
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        let wait = move || {
            rx.recv().unwrap_or_else(|_| {
                Err(PgError::Other(StorageError::Backend("the database runtime stopped".into())))
            })
        };
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }

    /// One blind write, retried on conflicts.
    fn apply(&self, batch: WriteBatch, durability: Durability) -> StorageResult<()> {
        self.apply_notifying(batch, durability, None)
    }

    /// One blind write, retried on conflicts, sending `notify` (a bus payload, hex) on the
    /// bus channel from the same transaction.
    fn apply_notifying(
        &self,
        batch: WriteBatch,
        durability: Durability,
        notify: Option<String>,
    ) -> StorageResult<()> {
        for op in &batch.ops {
            let (WriteOp::Put { table, .. } | WriteOp::Delete { table, .. }) = op;
            self.shared.check_table(table).map_err(PgError::into_storage)?;
        }
        let counter = match durability {
            Durability::Synced => &self.counts.synced_writes,
            Durability::Buffered => &self.counts.buffered_writes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.counts.written_bytes.fetch_add(batch_bytes(&batch), Ordering::Relaxed);
        let ops = collapse(batch);
        let upserted = upserts(&ops);
        let mark = self.flushed.mark();
        for _ in 0..MAX_ATTEMPTS {
            self.counts.requests.fetch_add(1, Ordering::Relaxed);
            let (pool, ops, notify) = (&self.shared.plain, &ops, notify.as_deref());
            let outcome = blocking(|| {
                let mut pooled = pool.get()?;
                let conn = pooled.conn();
                let result = conn.run(|client| async move {
                    write_and_commit(&client, Some(begin_sql(durability)), ops, notify).await
                });
                if result.is_err() {
                    rollback(conn);
                }
                result
            });
            match outcome {
                Err(e) if e.retryable() => continue,
                Err(e) => return Err(e.into_storage()),
                Ok(()) => {
                    self.committed(durability, mark, upserted);
                    return Ok(());
                }
            }
        }
        Err(StorageError::Backend(format!("a write conflicted {MAX_ATTEMPTS} times in a row; giving up")))
    }

    /// Account for a commit that returned: a buffered one is numbered; a synced one that
    /// `upserted` (so wrote to the write-ahead log, which a commit waits to flush; a
    /// transaction that wrote none, such as one deleting only absent keys, flushes nothing)
    /// made every buffered commit before `mark` durable.
    fn committed(&self, durability: Durability, mark: u64, upserted: bool) {
        match durability {
            Durability::Buffered => self.flushed.buffered_committed(),
            Durability::Synced if upserted => self.flushed.synced(mark),
            Durability::Synced => {}
        }
    }

    /// Make every commit that returned so far durable: a synchronous commit flushes the
    /// write-ahead log up to its own record, and so every earlier asynchronous commit with
    /// it. The commit must write something (a transaction that wrote no WAL is not flushed
    /// at all): one row of `conduit_sync` counts the syncs.
    ///
    /// Nothing is sent when every buffered commit of this process is durable already (all
    /// writes since the last sync were synced ones). Another process sharing the database
    /// makes its own buffered writes durable with its own syncs, as it must: its caller
    /// waits on that process, not this one.
    fn flush_wal(&self) -> StorageResult<()> {
        if self.flushed.all_durable() {
            return Ok(());
        }
        let mark = self.flushed.mark();
        self.counts.syncs.fetch_add(1, Ordering::Relaxed);
        self.on_plain(|client| async move {
            client
                .batch_execute(
                    "BEGIN; SET LOCAL synchronous_commit = on; \
                     UPDATE conduit_sync SET n = n + 1 WHERE id = 1; COMMIT",
                )
                .await?;
            Ok::<(), PgError>(())
        })?;
        self.flushed.synced(mark);
        Ok(())
    }
}

/// Messages the bus keeps for a listener that falls behind.
const BUS_BACKLOG: usize = 4_096;

/// The session connection: holds the process lock and, when processes share the database,
/// listens to the bus. Made again when lost.
struct Session {
    config: tokio_postgres::Config,
    multi_process: bool,
    bus: tokio::sync::broadcast::Sender<BusMessage>,
    /// Closed when the store is dropped: the session ends its connection (releasing the
    /// lock at once) and answers on the sender it got.
    stop: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
    /// Where callers find the connection (for roles); emptied when it ends.
    slot: Arc<std::sync::Mutex<SessionSlot>>,
}

impl Session {
    /// Keep the session up; `started` hears how the first attempt went (an error there,
    /// such as the lock held by another process, fails the start-up and ends the task).
    async fn run(mut self, started: tokio::sync::oneshot::Sender<Result<(), PgError>>) {
        let mut started = Some(started);
        loop {
            match self.open().await {
                Ok((client, mut ended)) => {
                    let client = Arc::new(client);
                    {
                        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
                        slot.client = Some(Arc::clone(&client));
                        slot.connections += 1;
                    }
                    match started.take() {
                        Some(started) => {
                            let _ = started.send(Ok(()));
                        }
                        // Messages may have been sent while no connection listened.
                        None => {
                            let _ = self.bus.send(BusMessage::Lost);
                        }
                    }
                    tokio::select! {
                        _ = &mut ended => {
                            self.slot.lock().unwrap_or_else(|p| p.into_inner()).ended();
                        }
                        stop = self.stop.recv() => {
                            // The connection closes once its client is gone.
                            self.slot.lock().unwrap_or_else(|p| p.into_inner()).ended();
                            drop(client);
                            let _ = ended.await;
                            if let Some(done) = stop {
                                let _ = done.send(());
                            }
                            return;
                        }
                    }
                    // At once: until it is back, a process sharing the database is out of
                    // touch with the others and answers no client request.
                    tracing::warn!("the PostgreSQL session connection was lost; making it again");
                    continue;
                }
                Err(e) => match started.take() {
                    Some(started) => {
                        let _ = started.send(Err(e));
                        return;
                    }
                    None => {
                        tracing::warn!(error = %e.into_storage(), "reconnecting the PostgreSQL session failed")
                    }
                },
            }
            tokio::time::sleep(SESSION_RETRY).await;
        }
    }

    /// Connect, take the process lock and listen; answers the client and what resolves
    /// when the connection ends.
    async fn open(
        &mut self,
    ) -> Result<(tokio_postgres::Client, tokio::sync::oneshot::Receiver<()>), PgError> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let (ended_tx, ended) = tokio::sync::oneshot::channel();
        let bus = self.bus.clone();
        tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if n.channel() == BUS_CHANNEL
                            && let Some(bytes) = unhex(n.payload())
                        {
                            let _ = bus.send(BusMessage::Payload(bytes.into()));
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break,
                }
            }
            let _ = ended_tx.send(());
        });
        let take = if self.multi_process {
            "SELECT pg_try_advisory_lock_shared($1)"
        } else {
            "SELECT pg_try_advisory_lock($1)"
        };
        let deadline = tokio::time::Instant::now() + PROCESS_LOCK_WAIT;
        loop {
            let row = client.query_one(take, &[&PROCESS_LOCK]).await?;
            if row.get::<_, bool>(0) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let database = self.config.get_dbname().unwrap_or("(default)");
                let detail = if self.multi_process {
                    format!(
                        "the PostgreSQL database `{database}` is in use by another conduit process \
                         that holds it alone: every process sharing a database needs \
                         `multi_process = true`"
                    )
                } else {
                    format!(
                        "the PostgreSQL database `{database}` is in use by another process (is a \
                         conduit server running?); several processes may share it only with \
                         `multi_process = true` on every one"
                    )
                };
                return Err(PgError::Other(StorageError::Backend(detail)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if self.multi_process {
            client.batch_execute(&format!("LISTEN {BUS_CHANNEL}")).await?;
        }
        Ok((client, ended))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Close the session first, so the process lock is free when this returns.
        if let Some(stop) = self.stop_session.take() {
            let _ = self.block_on_uncounted(async move {
                let (done, closed) = tokio::sync::oneshot::channel();
                if stop.send(done).await.is_ok() {
                    let _ = tokio::time::timeout(CONNECT_TIMEOUT, closed).await;
                }
                Ok::<(), PgError>(())
            });
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn begin_sql(durability: Durability) -> &'static str {
    match durability {
        Durability::Synced => "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL synchronous_commit = on",
        // Visible at once and kept by the server if conduit dies; a power loss of the
        // database host may lose the last moments until a later `sync`.
        Durability::Buffered => "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL synchronous_commit = off",
    }
}

fn rollback(conn: &mut Conn) {
    let rolled_back =
        conn.run(|client| async move { Ok::<(), PgError>(client.batch_execute("ROLLBACK").await?) });
    if rolled_back.is_err() {
        // A connection in an unknown state never goes back to the pool.
        conn.discard();
    }
}

fn batch_bytes(batch: &WriteBatch) -> u64 {
    batch
        .ops
        .iter()
        .map(|op| match op {
            WriteOp::Put { key, value, .. } => (key.len() + value.len()) as u64,
            WriteOp::Delete { key, .. } => key.len() as u64,
        })
        .sum()
}

/// A batch's net effect per table: the keys to delete and the rows to upsert. Later writes
/// to a key replace earlier ones, as applying the batch in order would.
type Collapsed = Vec<(&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Vec<u8>>)>;

/// Whether collapsed writes put any row.
fn upserts(ops: &Collapsed) -> bool {
    ops.iter().any(|(_, _, put_keys, _)| !put_keys.is_empty())
}

fn collapse(batch: WriteBatch) -> Collapsed {
    let mut last: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
    for op in batch.ops {
        match op {
            WriteOp::Put { table, key, value } => last.insert((table, key), Some(value)),
            WriteOp::Delete { table, key } => last.insert((table, key), None),
        };
    }
    let mut out: Collapsed = Vec::new();
    for ((table, key), value) in last {
        if out.last().is_none_or(|(t, ..)| *t != table) {
            out.push((table, Vec::new(), Vec::new(), Vec::new()));
        }
        let entry = out.last_mut().expect("pushed above");
        match value {
            Some(v) => {
                entry.2.push(key);
                entry.3.push(v);
            }
            None => entry.1.push(key),
        }
    }
    out
}

/// A statement of a pipeline: it sends its request at its first poll, then waits for the
/// answer.
type Step<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, PgError>> + Send + 'a>>;

/// Run `steps` as one pipeline: each is polled once, in order, before any answer is awaited,
/// and tokio-postgres sends a statement's messages at its first poll, so the statements
/// reach the server in this order and back to back (one round trip for all of them, not
/// one each). Every answer is awaited; the first error in order is returned, which is the
/// cause: after a failed statement the server refuses the rest of its transaction (25P02)
/// and turns its COMMIT into a rollback.
async fn pipeline<T>(steps: Vec<Step<'_, T>>) -> Result<Vec<T>, PgError> {
    use std::task::Poll;
    let mut pending: Vec<Option<Step<'_, T>>> = steps.into_iter().map(Some).collect();
    let mut results: Vec<Option<Result<T, PgError>>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut busy = false;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(step) = slot {
                match step.as_mut().poll(cx) {
                    Poll::Ready(done) => {
                        *result = Some(done);
                        *slot = None;
                    }
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    results.into_iter().flatten().collect()
}

fn unprepared() -> PgError {
    PgError::Other(StorageError::Backend("a write statement was not prepared".into()))
}

/// Apply collapsed writes on `client` and commit; `begin`, when given, opens the
/// transaction first, and `notify`, when given, is sent on the bus channel before the
/// commit (delivered with it). Two statements per table at most, prepared once per
/// connection (the ones not yet prepared there cost one round trip together), then sent as
/// one pipeline with the BEGIN and the COMMIT: one round trip for the whole write, however
/// many tables it touches.
async fn write_and_commit(
    client: &PgClient,
    begin: Option<&'static str>,
    ops: &Collapsed,
    notify: Option<&str>,
) -> Result<(), PgError> {
    let mut sql = Vec::new();
    for (table, deletes, put_keys, _) in ops {
        let t = sql_table(table);
        if !deletes.is_empty() {
            sql.push(format!("DELETE FROM {t} WHERE k = ANY($1)"));
        }
        if !put_keys.is_empty() {
            sql.push(format!(
                "INSERT INTO {t} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"
            ));
        }
    }
    let prepares: Vec<Step<'_, tokio_postgres::Statement>> = sql
        .iter()
        .map(|text| -> Step<'_, tokio_postgres::Statement> {
            Box::pin(async move { Ok(client.prepare_cached(text).await?) })
        })
        .collect();
    let mut statements = pipeline(prepares).await?.into_iter();
    let mut steps: Vec<Step<'_, ()>> = Vec::new();
    if let Some(begin) = begin {
        steps.push(Box::pin(async move { Ok(client.batch_execute(begin).await?) }));
    }
    for (_, deletes, put_keys, put_values) in ops {
        if !deletes.is_empty() {
            let stmt = statements.next().ok_or_else(unprepared)?;
            steps.push(Box::pin(async move {
                client.execute(&stmt, &[deletes]).await?;
                Ok(())
            }));
        }
        if !put_keys.is_empty() {
            let stmt = statements.next().ok_or_else(unprepared)?;
            steps.push(Box::pin(async move {
                client.execute(&stmt, &[put_keys, put_values]).await?;
                Ok(())
            }));
        }
    }
    if let Some(text) = notify {
        let stmt = client.prepare_cached(NOTIFY_SQL).await?;
        steps.push(Box::pin(async move {
            client.execute(&stmt, &[&BUS_CHANNEL, &text]).await?;
            Ok(())
        }));
    }
    steps.push(Box::pin(async move { Ok(client.batch_execute("COMMIT").await?) }));
    pipeline(steps).await.map(drop)
}

/// A message on the bus: the channel and the payload (hex).
const NOTIFY_SQL: &str = "SELECT pg_notify($1, $2)";

/// The statement reading `range` of `table` in `direction` order (at most `limit` rows), and
/// its parameters.
fn range_query(
    table: &str,
    range: &KeyRange,
    direction: Direction,
    limit: Option<usize>,
) -> (String, Vec<Vec<u8>>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    for (bound, inclusive, exclusive) in [(&range.start, ">=", ">"), (&range.end, "<=", "<")] {
        match bound {
            Bound::Included(key) => {
                params.push(key.clone());
                conditions.push(format!("k {inclusive} ${}", params.len()));
            }
            Bound::Excluded(key) => {
                params.push(key.clone());
                conditions.push(format!("k {exclusive} ${}", params.len()));
            }
            Bound::Unbounded => {}
        }
    }
    let filter =
        if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
    let order = match direction {
        Direction::Forward => "ASC",
        Direction::Reverse => "DESC",
    };
    let limit = limit.map_or_else(String::new, |n| format!(" LIMIT {n}"));
    (format!("SELECT k, v FROM {}{filter} ORDER BY k {order}{limit}", sql_table(table)), params)
}

async fn query_range(
    client: &PgClient,
    table: &str,
    range: &KeyRange,
    direction: Direction,
    limit: Option<usize>,
) -> Result<Vec<RawEntry>, PgError> {
    let (sql, params) = range_query(table, range, direction, limit);
    let stmt = client.prepare_cached(&sql).await?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&stmt, &refs).await?;
    Ok(rows.into_iter().map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))).collect())
}

async fn query_one(client: &PgClient, table: &str, key: Vec<u8>) -> Result<Option<Vec<u8>>, PgError> {
    let stmt = client.prepare_cached(&format!("SELECT v FROM {} WHERE k = $1", sql_table(table))).await?;
    Ok(client.query_opt(&stmt, &[&key]).await?.map(|r| r.get::<_, Vec<u8>>(0)))
}

/// A scan read a page at a time: the whole range is never held at once.
struct PagedScan<'a> {
    store: &'a PgStore,
    table: &'static str,
    /// What is left to read: narrowed past each page's last key.
    range: KeyRange,
    direction: Direction,
    page: VecDeque<RawEntry>,
    next_page: usize,
    done: bool,
}

impl Iterator for PagedScan<'_> {
    type Item = StorageResult<RawEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() && !self.done {
            let (table, range, direction, limit) =
                (self.table, self.range.clone(), self.direction, self.next_page);
            let fetched = self.store.on_plain(|client| async move {
                query_range(&client, table, &range, direction, Some(limit)).await
            });
            let rows = match fetched {
                Ok(rows) => rows,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            self.done = rows.len() < self.next_page;
            self.next_page = (self.next_page * 4).min(MAX_PAGE);
            if let Some((last, _)) = rows.last() {
                match self.direction {
                    Direction::Forward => self.range.start = Bound::Excluded(last.clone()),
                    Direction::Reverse => self.range.end = Bound::Excluded(last.clone()),
                }
            }
            self.page = rows.into();
        }
        self.page.pop_front().map(Ok)
    }
}

impl KvStore for PgStore {
    fn get(&self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.shared.check_table(table).map_err(PgError::into_storage)?;
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        let key = key.to_vec();
        self.on_plain(|client| async move { query_one(&client, table, key).await })
    }

    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        self.shared.check_table(table).map_err(PgError::into_storage)?;
        self.counts.multi_get_keys.fetch_add(keys.len() as u64, Ordering::Relaxed);
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = keys.to_vec();
        let found = self.on_plain(|client| async move {
            let stmt = client
                .prepare_cached(&format!("SELECT k, v FROM {} WHERE k = ANY($1)", sql_table(table)))
                .await?;
            let rows = client.query(&stmt, &[&wanted]).await?;
            Ok::<_, PgError>(
                rows.into_iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect::<HashMap<_, _>>(),
            )
        })?;
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    fn scan<'a>(
        &'a self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<RawEntry>> + 'a>> {
        self.shared.check_table(table).map_err(PgError::into_storage)?;
        self.counts.scans.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(PagedScan {
            store: self,
            table,
            range,
            direction,
            page: VecDeque::new(),
            next_page: FIRST_PAGE,
            done: false,
        }))
    }

    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.apply(batch, Durability::Synced)
    }

    fn write_buffered(&self, batch: WriteBatch) -> StorageResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.apply(batch, Durability::Buffered)
    }

    fn sync(&self) -> StorageResult<()> {
        self.flush_wal()
    }

    /// A synchronous commit is one round trip, as an asynchronous one is, and concurrent
    /// ones share their WAL flush in the server: a separate sync would cost a second
    /// transaction per write.
    fn prefers_synced_writes(&self) -> bool {
        true
    }

    /// One statement instead of the generic read-then-write transaction: no serialization
    /// failures when several processes take values at once (the row lock orders them), and
    /// a commit that does not wait for the disk. That is safe: PostgreSQL's log is written
    /// in order, so any durable commit that uses a value makes the value's own commit
    /// durable first; a crash can only hand out again values nothing durable used.
    fn next_ids(&self, name: &str, n: u64) -> StorageResult<std::ops::Range<u64>> {
        // Values are stored as the codec's version byte (1) and the number in decimal.
        let (table, key) = (sql_table(SEQUENCES_TABLE), hex(&sequence_key(name)));
        let sql = format!(
            "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL synchronous_commit = off; \
             INSERT INTO {table} (k, v) VALUES ('\\x{key}'::bytea, '\\x01'::bytea || convert_to('{n}', 'UTF8')) \
             ON CONFLICT (k) DO UPDATE SET v = '\\x01'::bytea || convert_to( \
               (convert_from(substring({table}.v from 2), 'UTF8')::numeric + {n})::text, 'UTF8') \
             RETURNING get_byte(v, 0), convert_from(substring(v from 2), 'UTF8'); COMMIT"
        );
        let (version, last) = self.on_plain(|client| async move {
            let messages = client.simple_query(&sql).await?;
            let row = messages.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0).unwrap_or_default().to_owned(),
                    row.get(1).unwrap_or_default().to_owned(),
                )),
                _ => None,
            });
            Ok::<_, PgError>(row.unwrap_or_default())
        })?;
        let corrupt = |detail: String| StorageError::Corrupt { table: SEQUENCES_TABLE, detail };
        if version != "1" {
            return Err(corrupt(format!("sequence `{name}` has value version {version:?}, not 1")));
        }
        let last: u64 =
            last.parse().map_err(|_| corrupt(format!("sequence `{name}` holds {last:?}, not a number")))?;
        if last > u64::MAX - 1 || last < n {
            return Err(StorageError::Backend(format!("sequence `{name}` would pass the largest value")));
        }
        Ok(last + 1 - n..last + 1)
    }

    fn member(&self) -> Option<u64> {
        self.member
    }

    /// A NOTIFY on the bus channel, in a transaction of its own: PostgreSQL delivers
    /// notifications in the order their transactions committed.
    fn publish(&self, payload: &[u8], with: WriteBatch) -> StorageResult<()> {
        if self.member.is_none() {
            return Err(StorageError::Backend("the message bus needs `multi_process = true`".into()));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(StorageError::Backend(format!(
                "a bus message of {} bytes is larger than {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        let text = hex(payload);
        if !with.is_empty() {
            return self.apply_notifying(with, Durability::Synced, Some(text));
        }
        // Alone, the statement is its own transaction; prepared once per connection, it
        // costs one round trip.
        self.on_plain(|client| async move {
            let stmt = client.prepare_cached(NOTIFY_SQL).await?;
            client.execute(&stmt, &[&BUS_CHANNEL, &text]).await?;
            Ok::<(), PgError>(())
        })
    }

    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<BusMessage>> {
        self.member.map(|_| self.bus.subscribe())
    }

    /// The session connection listens to the bus; each one made is a generation.
    fn bus_generation(&self) -> Option<u64> {
        let slot = self.session.lock().unwrap_or_else(|p| p.into_inner());
        slot.client.as_ref().map(|_| slot.connections)
    }

    /// A session-level advisory lock on the session connection, taken without waiting:
    /// PostgreSQL releases it when that connection ends (the process killed, the network
    /// lost), and the roles are forgotten here when it does.
    fn lead(&self, role: &str) -> StorageResult<bool> {
        if self.member.is_none() {
            return Ok(true);
        }
        let key = role_key(role);
        let client = {
            let slot = self.session.lock().unwrap_or_else(|p| p.into_inner());
            if slot.roles.contains(&key) {
                return Ok(true);
            }
            match &slot.client {
                Some(client) => Arc::clone(client),
                None => return Ok(false),
            }
        };
        let asking = Arc::clone(&client);
        let took = self.block_on(async move {
            let row = asking.query_one("SELECT pg_try_advisory_lock($1)", &[&key]).await?;
            Ok::<_, PgError>(row.get::<_, bool>(0))
        })?;
        let mut slot = self.session.lock().unwrap_or_else(|p| p.into_inner());
        // The connection may have ended (and the lock with it) while asking.
        let same = slot.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client));
        if took && same {
            slot.roles.insert(key);
        }
        Ok(took && same)
    }

    fn live_members(&self) -> StorageResult<Vec<u64>> {
        let names = self.on_plain(|client| async move {
            let rows = client
                .query(
                    "SELECT DISTINCT application_name FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name LIKE $1",
                    &[&format!("{MEMBER_PREFIX}%")],
                )
                .await?;
            Ok::<_, PgError>(rows.into_iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
        })?;
        Ok(names
            .iter()
            .filter_map(|n| u64::from_str_radix(n.strip_prefix(MEMBER_PREFIX)?, 16).ok())
            .collect())
    }

    fn flush(&self) -> StorageResult<()> {
        self.flush_wal()
    }

    fn ping(&self) -> StorageResult<()> {
        self.on_plain(|client| async move {
            client.batch_execute("SELECT 1").await?;
            Ok::<(), PgError>(())
        })
    }

    /// `conduit backup` copies a RocksDB database; PostgreSQL has its own tools, which the
    /// operator of a replicated database already runs.
    fn checkpoint(&self, dir: &std::path::Path) -> StorageResult<()> {
        Err(StorageError::Backend(format!(
            "the database is on PostgreSQL, which `conduit backup` does not copy (nothing was \
             written to {}): back it up with PostgreSQL's own tools (pg_dump, pg_basebackup) \
             and copy the media directory beside it",
            dir.display()
        )))
    }

    /// A SERIALIZABLE PostgreSQL transaction: the body's reads go to the database inside it,
    /// its writes are kept here (so its own reads see them) and sent at commit; a
    /// serialization failure anywhere runs the body again.
    fn transact(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn Transaction) -> StorageResult<bool>,
    ) -> StorageResult<()> {
        let mark = self.flushed.mark();
        for _ in 0..MAX_ATTEMPTS {
            let mut tx = PgTx {
                store: self,
                conn: None,
                begun: false,
                conflicted: false,
                pending: HashMap::new(),
                batch: WriteBatch::new(),
                durability,
            };
            let outcome = body(&mut tx);
            match outcome {
                Ok(true) => match tx.commit() {
                    Ok(upserted) => {
                        self.committed(durability, mark, upserted);
                        return Ok(());
                    }
                    Err(e) if e.retryable() => continue,
                    Err(e) => return Err(e.into_storage()),
                },
                Ok(false) => {
                    // A run that saw a conflict read nothing reliable, whatever it answered
                    // (the typed `transaction` helper turns a body's error into an abort).
                    let conflicted = tx.conflicted;
                    tx.finish_without_commit();
                    if conflicted {
                        continue;
                    }
                    return Ok(());
                }
                Err(e) => {
                    let conflicted = tx.conflicted;
                    tx.finish_without_commit();
                    if conflicted {
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        Err(StorageError::Backend(format!(
            "a transaction conflicted {MAX_ATTEMPTS} times in a row; giving up"
        )))
    }

    /// Counters, and each table's size as PostgreSQL's statistics estimate it.
    fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        let pool = &self.shared.plain;
        let sizes = blocking(|| {
            pool.get()?.conn().run(|client| async move {
                let rows = client
                    .query(
                        "SELECT c.relname::text, greatest(c.reltuples, 0)::bigint, \
                         pg_total_relation_size(c.oid) FROM pg_class c \
                         WHERE c.relkind = 'r' AND c.relname LIKE 'kv\\_%' \
                         AND c.relnamespace = to_regnamespace(current_schema())::oid",
                        &[],
                    )
                    .await?;
                Ok::<_, PgError>(
                    rows.into_iter()
                        .map(|r| (r.get::<_, String>(0), (r.get::<_, i64>(1), r.get::<_, i64>(2))))
                        .collect::<HashMap<_, _>>(),
                )
            })
        })
        .unwrap_or_default();
        for &name in &self.order {
            let (keys, bytes) = sizes.get(&format!("kv_{name}")).copied().unwrap_or((0, 0));
            stats.tables.push(TableStats {
                name,
                estimated_keys: keys.max(0) as u64,
                live_sst_bytes: bytes.max(0) as u64,
                ..TableStats::default()
            });
        }
        let c = &self.counts;
        stats.gets = c.gets.load(Ordering::Relaxed);
        stats.multi_get_keys = c.multi_get_keys.load(Ordering::Relaxed);
        stats.scans = c.scans.load(Ordering::Relaxed);
        stats.synced_writes = c.synced_writes.load(Ordering::Relaxed);
        stats.buffered_writes = c.buffered_writes.load(Ordering::Relaxed);
        stats.written_bytes = c.written_bytes.load(Ordering::Relaxed);
        stats.syncs = c.syncs.load(Ordering::Relaxed);
        stats.requests = c.requests.load(Ordering::Relaxed);
        stats
    }
}

/// One run of a transaction body.
struct PgTx<'s> {
    store: &'s PgStore,
    /// The transaction's connection, taken at its first read or at commit.
    conn: Option<Pooled>,
    begun: bool,
    /// A read failed on a serialization conflict: the run is over and is retried.
    conflicted: bool,
    pending: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    batch: WriteBatch,
    durability: Durability,
}

impl PgTx<'_> {
    /// Run `query` on the transaction's connection, beginning the transaction first (in the
    /// same round trip) if this is its first statement.
    fn run<T: Send, F>(&mut self, query: impl FnOnce(Arc<PgClient>) -> F + Send) -> Result<T, PgError>
    where
        F: Future<Output = Result<T, PgError>>,
    {
        self.store.counts.requests.fetch_add(1, Ordering::Relaxed);
        let begin = (!self.begun).then_some(begin_sql(self.durability));
        let (pool, slot) = (&self.store.shared.txns, &mut self.conn);
        let result = blocking(|| {
            let pooled = match slot {
                Some(pooled) => pooled,
                None => slot.insert(pool.get()?),
            };
            Ok::<_, PgError>(pooled.conn().run(|client| async move {
                match begin {
                    Some(sql) => {
                        let (begun, answer) =
                            tokio::join!(client.batch_execute(sql), query(Arc::clone(&client)));
                        begun.map_err(PgError::from).and(answer)
                    }
                    None => query(client).await,
                }
            }))
        })?;
        self.begun = true;
        if let Err(e) = &result
            && e.retryable()
        {
            self.conflicted = true;
        }
        result
    }

    /// Commit; answers whether the commit upserted a row.
    fn commit(mut self) -> Result<bool, PgError> {
        let batch = std::mem::take(&mut self.batch);
        for op in &batch.ops {
            let (WriteOp::Put { table, .. } | WriteOp::Delete { table, .. }) = op;
            if let Err(e) = self.store.shared.check_table(table) {
                self.finish_without_commit();
                return Err(e);
            }
        }
        if batch.is_empty() && !self.begun {
            return Ok(false);
        }
        let counter = match self.durability {
            Durability::Synced => &self.store.counts.synced_writes,
            Durability::Buffered => &self.store.counts.buffered_writes,
        };
        if !batch.is_empty() {
            counter.fetch_add(1, Ordering::Relaxed);
            self.store.counts.written_bytes.fetch_add(batch_bytes(&batch), Ordering::Relaxed);
        }
        let ops = collapse(batch);
        let upserted = upserts(&ops);
        let result = self.run(move |client| async move { write_and_commit(&client, None, &ops, None).await });
        if result.is_err() {
            self.finish_without_commit();
        } else {
            self.conn = None;
        }
        result.map(|()| upserted)
    }

    /// Roll back whatever the run began and give the connection back.
    fn finish_without_commit(&mut self) {
        let Some(mut pooled) = self.conn.take() else { return };
        blocking(|| rollback(pooled.conn()));
    }
}

impl Drop for PgTx<'_> {
    fn drop(&mut self) {
        self.finish_without_commit();
    }
}

impl Transaction for PgTx<'_> {
    fn get(&mut self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if let Some(pending) = self.pending.get(&(table, key.to_vec())) {
            return Ok(pending.clone());
        }
        self.store.shared.check_table(table).map_err(PgError::into_storage)?;
        self.store.counts.gets.fetch_add(1, Ordering::Relaxed);
        let key = key.to_vec();
        self.run(move |client| async move { query_one(&client, table, key).await })
            .map_err(PgError::into_storage)
    }

    fn scan(
        &mut self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Vec<RawEntry>> {
        self.store.shared.check_table(table).map_err(PgError::into_storage)?;
        self.store.counts.scans.fetch_add(1, Ordering::Relaxed);
        let query_range_copy = range.clone();
        let stored = self
            .run(move |client| async move {
                query_range(&client, table, &query_range_copy, Direction::Forward, None).await
            })
            .map_err(PgError::into_storage)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for ((t, key), value) in &self.pending {
            if *t == table && range.contains(key) {
                match value {
                    Some(v) => merged.insert(key.clone(), v.clone()),
                    None => merged.remove(key),
                };
            }
        }
        Ok(match direction {
            Direction::Forward => merged.into_iter().collect(),
            Direction::Reverse => merged.into_iter().rev().collect(),
        })
    }

    fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert((table, key.clone()), Some(value.clone()));
        self.batch.put(table, key, value);
    }

    fn delete(&mut self, table: &'static str, key: Vec<u8>) {
        self.pending.insert((table, key.clone()), None);
        self.batch.delete(table, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{conformance, pg_cluster::PgCluster};

    fn store(cluster: &PgCluster, db: &str) -> Arc<dyn KvStore> {
        let url = cluster.create_database(db).expect("database created");
        let options =
            PgOptions { url, pool_size: 16, statement_timeout_ms: Some(30_000), multi_process: false };
        PgStore::open_with(&options, conformance::TABLES, |_| Ok(())).expect("store opens")
    }

    #[test]
    fn postgresql_passes_the_conformance_suite() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        conformance::run(store(&cluster, "conformance").as_ref());
    }

    #[test]
    fn postgresql_passes_the_concurrency_conformance_suite() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        conformance::run_concurrent(store(&cluster, "concurrency"));
    }

    #[test]
    fn a_database_with_a_newer_schema_is_refused() {
        use crate::storage::{
            migrations::CURRENT_SCHEMA_VERSION,
            tables::{META, SCHEMA_VERSION_KEY},
        };
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let url = cluster.create_database("newer").expect("database created");
        let options = PgOptions { url, pool_size: 4, statement_timeout_ms: None, multi_process: false };
        let store = crate::storage::open_postgres(&options).expect("a new database opens");
        let meta = META.open(&store);
        assert_eq!(meta.get(&SCHEMA_VERSION_KEY.to_owned()).unwrap(), Some(CURRENT_SCHEMA_VERSION));
        meta.insert(&SCHEMA_VERSION_KEY.to_owned(), &(CURRENT_SCHEMA_VERSION + 1)).unwrap();
        // Closed, the store leaves the database (and its process lock) to the next.
        drop((meta, store));
        let err = crate::storage::open_postgres(&options).err().expect("refused").to_string();
        assert!(err.contains("newer conduit"), "{err}");
    }

    #[test]
    fn a_second_process_on_a_database_is_refused_unless_every_one_shares_it() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let url = cluster.create_database("shared").expect("database created");
        let options = |multi_process| PgOptions {
            url: url.clone(),
            pool_size: 2,
            statement_timeout_ms: None,
            multi_process,
        };
        let alone = PgStore::open_with(&options(false), conformance::TABLES, |_| Ok(())).unwrap();
        for multi_process in [false, true] {
            let err = PgStore::open_with(&options(multi_process), conformance::TABLES, |_| Ok(()))
                .err()
                .expect("refused while another process holds the database")
                .to_string();
            assert!(err.contains("in use by another"), "{err}");
        }
        drop(alone);
        // Gone, it leaves the database to processes that share it.
        let first = PgStore::open_with(&options(true), conformance::TABLES, |_| Ok(())).unwrap();
        let second = PgStore::open_with(&options(true), conformance::TABLES, |_| Ok(())).unwrap();
        let err =
            PgStore::open_with(&options(false), conformance::TABLES, |_| Ok(())).err().unwrap().to_string();
        assert!(err.contains("multi_process = true"), "{err}");
        // Both are live members, with their own ids, and hear each other on the bus.
        let (a, b) = (first.member().unwrap(), second.member().unwrap());
        assert_ne!(a, b);
        let mut live = first.live_members().unwrap();
        live.sort_unstable();
        let mut expected = vec![a, b];
        expected.sort_unstable();
        assert_eq!(live, expected);
        let mut heard = second.subscribe().unwrap();
        first.publish(b"hello \x00 bytes", WriteBatch::new()).unwrap();
        let got = heard.blocking_recv().unwrap();
        assert!(matches!(got, BusMessage::Payload(p) if &*p == b"hello \x00 bytes"));
        // A message sent with a write: the row is there for whoever hears the message.
        let mut row = WriteBatch::new();
        row.put("conf_a", b"promise".to_vec(), b"7".to_vec());
        first.publish(b"with a row", row).unwrap();
        let got = heard.blocking_recv().unwrap();
        assert!(matches!(got, BusMessage::Payload(p) if &*p == b"with a row"));
        assert_eq!(second.get("conf_a", b"promise").unwrap().as_deref(), Some(&b"7"[..]));
        drop(second);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while first.live_members().unwrap() != vec![a] {
            assert!(std::time::Instant::now() < deadline, "a closed store stays live");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn scans_are_paged_and_see_every_row_in_order() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let store = store(&cluster, "paging");
        let mut batch = WriteBatch::new();
        for i in 0..3000u32 {
            batch.put("conf_a", i.to_be_bytes().to_vec(), vec![1]);
        }
        store.write(batch).unwrap();
        let forward: Vec<_> = store
            .scan("conf_a", KeyRange::all(), Direction::Forward)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(forward, (0..3000u32).map(|i| i.to_be_bytes().to_vec()).collect::<Vec<_>>());
        let reverse: Vec<_> = store
            .scan("conf_a", KeyRange::all().after(10u32.to_be_bytes().to_vec()), Direction::Reverse)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(reverse, (11..3000u32).rev().map(|i| i.to_be_bytes().to_vec()).collect::<Vec<_>>());
    }

    #[test]
    fn a_transaction_body_may_read_the_store_while_every_connection_is_in_a_transaction() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let url = cluster.create_database("nested").expect("database created");
        // Two connections: one for transactions, one for the rest.
        let options = PgOptions { url, pool_size: 2, statement_timeout_ms: None, multi_process: false };
        let store = PgStore::open_with(&options, conformance::TABLES, |_| Ok(())).unwrap();
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..20u8 {
                        crate::storage::transaction::<_, StorageError>(
                            store.as_ref(),
                            Durability::Buffered,
                            |tx| {
                                let outside = store.get("conf_b", b"k")?;
                                let inside = tx.get("conf_a", &[t])?;
                                tx.put("conf_a", vec![t], vec![i]);
                                Ok(((outside, inside), true))
                            },
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.get("conf_a", &[3]).unwrap(), Some(vec![19]));
    }

    /// Every connection is driven by the thread that uses it, and callers come from
    /// anywhere: plain threads, tokio workers, a current-thread runtime (where a
    /// connection's own runtime may not start, so the call moves to a thread of its own).
    #[test]
    fn the_store_answers_callers_on_any_thread_and_replaces_connections_the_server_ended() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let store = store(&cluster, "callers");
        store
            .write({
                let mut batch = WriteBatch::new();
                batch.put("conf_a", b"k".to_vec(), b"v".to_vec());
                batch
            })
            .unwrap();
        let expected = Some(b"v".to_vec());
        assert_eq!(store.get("conf_a", b"k").unwrap(), expected);
        let workers =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let on_workers = workers.block_on({
            let store = Arc::clone(&store);
            async move { tokio::spawn(async move { store.get("conf_a", b"k") }).await.unwrap() }
        });
        assert_eq!(on_workers.unwrap(), expected);
        let single = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        assert_eq!(single.block_on(async { store.get("conf_a", b"k") }).unwrap(), expected);
        // The server ends every connection of the store (as a restart does): the idle ones
        // are found closed when taken, and replaced, so the next calls still answer.
        cluster
            .psql(
                "callers",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = 'callers' AND pid <> pg_backend_pid()",
            )
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        for _ in 0..20 {
            assert_eq!(store.get("conf_a", b"k").unwrap(), expected);
        }
        crate::storage::transaction::<_, StorageError>(store.as_ref(), Durability::Synced, |tx| {
            tx.put("conf_a", b"k2".to_vec(), b"w".to_vec());
            Ok(((), true))
        })
        .unwrap();
        assert_eq!(store.get("conf_a", b"k2").unwrap(), Some(b"w".to_vec()));
    }
}
