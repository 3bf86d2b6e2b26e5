//! Boot and serve: open storage, build services, start background workers (periodic upkeep,
//! the delayed-event timer), serve HTTP on the bound listeners (each with the router of the
//! resources it serves) until a shutdown signal, then finish in-flight requests and flush.
//! Also the operator control socket, and the [`Reloader`] that takes new configurations while
//! the server runs.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::extract::ConnectInfo;
use hyper::Request;
use tokio::{net::TcpListener, sync::watch};

use crate::{
    Result, api,
    config::{Config, DatabaseBackend},
    control,
    metrics::Metrics,
    net::{self, Listeners, NetStats, TimedBody},
    reload::{ReloadReport, Reloader},
    service::{
        Services,
        clock::{Clock, SystemClock},
    },
    storage,
};

/// How often last-seen updates held in memory are written out.
const LAST_SEEN_FLUSH_INTERVAL: Duration = Duration::from_secs(30);
/// Expired UIA sessions, reserved media IDs, cached URL previews and OpenID tokens are swept
/// every this many flush intervals (10 minutes).
const UIAA_SWEEP_EVERY: u32 = 20;
/// Media past the retention age is purged every this many flush intervals (an hour), and
/// `/notifications` rows past their keeping time are deleted.
const MEDIA_RETENTION_EVERY: u32 = 120;
/// Notification rows deleted at most per hourly sweep (the next sweep goes on).
const EXPIRE_NOTIFICATIONS_BUDGET: usize = 200_000;

/// A built server: storage open, services wired, not yet serving.
pub struct Server {
    services: Arc<Services>,
    metrics: Arc<Metrics>,
    net_stats: Arc<NetStats>,
    reloader: Arc<Reloader>,
}

impl Server {
    /// Open the configured database and build the services, with the wall clock.
    pub fn build(config: Config) -> Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock))
    }

    /// As `build`, with a chosen clock (tests move time instead of sleeping).
    pub fn build_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self> {
        let store = match config.database_backend {
            DatabaseBackend::Rocksdb => storage::open_rocksdb(&config.database_path)?,
            DatabaseBackend::Postgresql => {
                // The control socket (and media, by default) still live in `database_path`.
                std::fs::create_dir_all(&config.database_path).map_err(|e| {
                    storage::StorageError::Backend(format!(
                        "cannot create {}: {e}",
                        config.database_path.display()
                    ))
                })?;
                let options = config.postgres_options().ok_or_else(|| {
                    storage::StorageError::Backend(
                        "database_backend = \"postgresql\" needs database_url".into(),
                    )
                })?;
                storage::open_postgres(&options)?
            }
        };
        let reloader = Arc::new(Reloader::new(&config));
        let services = Arc::new(Services::build(Arc::new(config), store, clock)?);
        let net_stats = Arc::new(NetStats::default());
        let metrics = Arc::new(Metrics::new(Arc::clone(&services), Arc::clone(&net_stats)));
        // Live-reloadable parts that services own are registered here; see `reload.rs`.
        reloader.register(Arc::clone(&services.rate_limits) as Arc<dyn crate::reload::LiveReload>);
        reloader.register(Arc::clone(&services.appservice_sender) as Arc<dyn crate::reload::LiveReload>);
        reloader.register(Arc::clone(&services.ldap) as Arc<dyn crate::reload::LiveReload>);
        Ok(Self { services, metrics, net_stats, reloader })
    }

    /// The services, for operator commands that run without HTTP.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The metrics registry (what `/metrics` serves).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The live-reload hook, to register parts built outside (the log filter, listeners) and
    /// to reload after `run` has taken the server.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Hand a new configuration to every live-reloadable part (see `reload.rs`); keys that
    /// cannot change live are listed in the report. An error rejects the configuration and
    /// changes nothing.
    pub async fn reload(&self, config: &Config) -> std::result::Result<ReloadReport, String> {
        self.reloader.reload(config).await
    }

    /// Serve on `listener` (plain HTTP, `client` and `federation`) until `shutdown`
    /// resolves; see [`Self::serve`].
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let listeners = Listeners::from_tcp(listener)?;
        self.serve(listeners, shutdown).await
    }

    /// Serve on every bound listener until `shutdown` resolves; then stop accepting, let
    /// in-flight requests finish, persist in-memory state and flush storage.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_workers, workers_stopped) = watch::channel(false);
        // With several processes on one database, the once-per-server work below runs on
        // the one that leads; a process alone leads from the start.
        let leader = tokio::spawn(Arc::clone(&self.services.leader).run(workers_stopped.clone()));
        let leading = self.services.leader.subscribe();
        // The delayed-event timer starts with the server (or the lead), so events that fell
        // due while it was down are sent at once.
        let delayed_timer = tokio::spawn(while_leading(leading.clone(), workers_stopped.clone(), {
            let delayed = Arc::clone(&self.services.delayed_actions);
            move |stop| Arc::clone(&delayed).run(stop)
        }));
        let flusher =
            tokio::spawn(maintain_periodically(Arc::clone(&self.services), workers_stopped.clone()));
        let sweeper = tokio::spawn(while_leading(leading.clone(), workers_stopped.clone(), {
            let services = Arc::clone(&self.services);
            move |stop| sweep_periodically(Arc::clone(&services), stop)
        }));
        // Rooms joined through another server that a stop left unseated are seated by the
        // process that leads (one seating per room).
        let join_resumer = tokio::spawn(while_leading(leading.clone(), workers_stopped.clone(), {
            let room_federation =
                self.services.config.allow_federation.then(|| Arc::clone(&self.services.room_federation));
            move |_| {
                let room_federation = room_federation.clone();
                async move {
                    if let Some(room_federation) = room_federation
                        && let Err(e) = room_federation.resume_joins()
                    {
                        tracing::warn!(error = %e, "pending joins could not be taken up");
                    }
                }
            }
        }));
        let ldap_sync = tokio::spawn(while_leading(leading.clone(), workers_stopped.clone(), {
            let ldap_sync = Arc::clone(&self.services.ldap_sync);
            move |stop| Arc::clone(&ldap_sync).run(stop)
        }));
        // Every process, leading or not: each has its own heap.
        let trimmer = tokio::spawn(Arc::clone(&self.services.memory).run(workers_stopped.clone()));
        // Pushers' queues resume where they stopped: notifications written while the server
        // was down (or under way at a crash) are delivered now.
        self.services.push_gateways.start()?;
        self.services.appservice_sender.start()?;
        self.services.federation_sender.start()?;
        self.services.remote_e2ee.start();
        self.services.appservice_ephemeral.start();
        // The outbox's queues run while this process leads (every queue in the table is
        // run when it gains the lead; all end when it loses it).
        let deliveries = tokio::spawn({
            let (outbox, mut leading, mut stop) =
                (Arc::clone(&self.services.outbox), leading.clone(), workers_stopped.clone());
            async move {
                loop {
                    let leads = *leading.borrow_and_update();
                    outbox.set_leading(leads);
                    tokio::select! {
                        changed = leading.changed() => if changed.is_err() { return },
                        _ = stop.changed() => return,
                    }
                }
            }
        });
        // Operator commands reach the running server here; without the socket they refuse
        // (the database is locked), as before it existed.
        let socket_path = control::socket_path(&self.services.config);
        let control_task = match control::bind(&socket_path) {
            Ok(socket) => Some(tokio::spawn(control::serve(
                socket,
                Arc::clone(&self.services),
                workers_stopped.clone(),
            ))),
            Err(e) => {
                tracing::warn!(
                    path = %socket_path.display(),
                    error = %e,
                    "no control socket: operator commands need the server stopped"
                );
                None
            }
        };

        let router = api::router(Arc::clone(&self.services), Arc::clone(&self.metrics));
        let apps: Vec<axum::Router> = listeners
            .iter()
            .map(|listener| {
                tracing::info!(
                    addr = %listener.local_addr,
                    resources = ?listener.config.resources,
                    tls = listener.uses_tls(),
                    socket_activation = listener.inherited,
                    "listening"
                );
                api::for_listener(router.clone(), &listener.config.resources)
            })
            .collect();
        // Each connection's requests carry its peer address, as the extractor expects.
        let make = move |index: usize, peer: SocketAddr| {
            tower::util::MapRequest::new(apps[index].clone(), move |mut request: Request<TimedBody>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            })
        };
        let (stop_serving, serving_stopped) = watch::channel(false);
        let signal = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_serving.send(true);
        });
        let settings = net::Settings::from_config(&self.services.config);
        net::serve(listeners, settings, Arc::clone(&self.net_stats), make, serving_stopped).await;
        signal.abort();
        let served = Ok(());

        let _ = stop_workers.send(true);
        self.services.outbox.stop().await;
        let _ = flusher.await;
        let _ = sweeper.await;
        let _ = delayed_timer.await;
        let _ = ldap_sync.await;
        let _ = trimmer.await;
        let _ = join_resumer.await;
        let _ = deliveries.await;
        let _ = leader.await;
        if let Some(task) = control_task {
            let _ = task.await;
        }
        self.services.shutdown()?;
        tracing::info!("shut down cleanly");
        served
    }
}

/// Run `job` while this process leads, until `stop`: started each time the lead is gained,
/// and told to stop (through the receiver it was given) when the lead is lost.
async fn while_leading<F, J>(mut leading: watch::Receiver<bool>, mut stop: watch::Receiver<bool>, job: F)
where
    F: Fn(watch::Receiver<bool>) -> J,
    J: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            led = lead_becomes(&mut leading, true) => if !led { return },
            _ = stop.changed() => return,
        }
        let (stop_job, job_stopped) = watch::channel(false);
        let running = tokio::spawn(job(job_stopped));
        let stopping = tokio::select! {
            lost = lead_becomes(&mut leading, false) => !lost,
            _ = stop.changed() => true,
        };
        let _ = stop_job.send(true);
        let _ = running.await;
        if stopping {
            return;
        }
    }
}

/// Wait until leading is `leads`; `false` when the leader is gone.
async fn lead_becomes(leading: &mut watch::Receiver<bool>, leads: bool) -> bool {
    leading.wait_for(|now| *now == leads).await.is_ok()
}

/// Each process's upkeep: persist the last-seen times it holds in memory, mark offline
/// the users it saw go idle.
async fn maintain_periodically(services: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = services.devices.flush_last_seen() {
                    tracing::warn!(error = %e, "writing last-seen times failed");
                }
                match services.presence.sweep() {
                    Ok(n) if n > 0 => tracing::debug!(marked = n, "idle users marked offline"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "presence sweep failed"),
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The once-per-server upkeep (on the leading process): sweep expired UIA sessions, reserved
/// media IDs, cached previews, OpenID and login tokens and browser sessions; purge media,
/// notifications and audit records past their retention.
async fn sweep_periodically(services: Arc<Services>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH_INTERVAL);
    let mut ticks: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(UIAA_SWEEP_EVERY) {
                    match services.uiaa.remove_expired() {
                        Ok(n) if n > 0 => tracing::debug!(removed = n, "swept expired UIA sessions"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweeping UIA sessions failed"),
                    }
                    match services.media.sweep_expired_pending() {
                        Ok(n) if n > 0 => tracing::debug!(removed = n, "swept unused media IDs"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweeping unused media IDs failed"),
                    }
                    if let Err(e) = services.url_previews.sweep() {
                        tracing::warn!(error = %e, "sweeping cached URL previews failed");
                    }
                    match services.openid.remove_expired() {
                        Ok(n) if n > 0 => tracing::debug!(removed = n, "swept expired OpenID tokens"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweeping OpenID tokens failed"),
                    }
                    match services.login_tokens.remove_expired() {
                        Ok(n) if n > 0 => tracing::debug!(removed = n, "swept expired login tokens"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweeping login tokens failed"),
                    }
                    match services.oauth.remove_expired_sessions() {
                        Ok(n) if n > 0 => tracing::debug!(removed = n, "swept expired browser sessions"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sweeping browser sessions failed"),
                    }
                }
                if ticks.is_multiple_of(MEDIA_RETENTION_EVERY) {
                    match services.media.apply_retention().await {
                        Ok(report) if report.media > 0 => tracing::info!(
                            media = report.media,
                            bytes_freed = report.bytes_freed,
                            "purged media past its retention"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "purging media past its retention failed"),
                    }
                    match services.notifications.expire(EXPIRE_NOTIFICATIONS_BUDGET) {
                        Ok(n) if n > 0 => tracing::debug!(deleted = n, "deleted notifications past their keeping time"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "deleting old notifications failed"),
                    }
                    match services.audit.prune() {
                        Ok(n) if n > 0 => tracing::info!(deleted = n, "deleted audit records past their retention"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "deleting old audit records failed"),
                    }
                }
            }
            _ = stop.changed() => return,
        }
    }
}
