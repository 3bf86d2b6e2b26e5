//! The systemd service protocol (`sd_notify`): readiness with a status line, reload and stop
//! notices, watchdog pings and start-up timeout extensions, sent to the datagram socket the
//! service manager names in `NOTIFY_SOCKET`. Nothing is sent when that is unset (the server
//! was not started by systemd with `Type=notify`). Besides `config.rs`, this is the one
//! code that reads the environment: the variables the service manager sets for its
//! service (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`), which are not settings.

use std::{future::Future, time::Duration};

use sd_notify::NotifyState;

/// While start-up work runs, an extension is sent this often...
const EXTEND_EVERY: Duration = Duration::from_secs(10);
/// ...asking for this much more time each (so one late tick is not fatal).
const EXTEND_BY: Duration = Duration::from_secs(30);

/// A status is one line of the message: a line break would start another assignment (an
/// error message from a config parser may hold several).
fn one_line(status: &str) -> String {
    status.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sends notifications to the service manager, when there is one.
#[derive(Clone, Copy, Debug)]
pub struct Notifier {
    enabled: bool,
}

impl Notifier {
    /// A notifier for this process: enabled when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Self { enabled: std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty()) }
    }

    /// Whether notifications are sent.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "cannot notify the service manager");
        }
    }

    /// `READY=1` with a status line: the database is open and the listeners are bound. Also
    /// the end of a reload.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    /// `STATUS=` alone.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    /// `STOPPING=1`: a shutdown signal arrived; in-flight requests are finishing.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("Shutting down")]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (which systemd 253 and later require with it).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `EXTEND_TIMEOUT_USEC`: more time for the current phase (start-up or shutdown).
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// Run slow start-up work (opening and migrating the database, rebuilding an index) on a
    /// blocking thread, extending systemd's start timeout while it runs, so a long migration
    /// is not killed by `TimeoutStartSec`. The work itself knows nothing of systemd.
    pub async fn extend_timeout_while<T: Send + 'static>(
        &self,
        status: &str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        self.status(status);
        let work = tokio::task::spawn_blocking(work);
        self.keep_extending(work).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    async fn keep_extending<F: Future>(&self, work: F) -> F::Output {
        if !self.enabled {
            return work.await;
        }
        tokio::pin!(work);
        let mut tick = tokio::time::interval(EXTEND_EVERY);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => self.extend_timeout(EXTEND_BY),
            }
        }
    }

    /// When the service manager asked for watchdog pings (`WatchdogSec=`, seen as
    /// `WATCHDOG_USEC` for this PID), spawn a task on the async runtime that sends
    /// `WATCHDOG=1` every half interval: a runtime that stops running tasks stops the pings
    /// and systemd restarts the service.
    pub fn spawn_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let interval = sd_notify::watchdog_enabled()?.checked_div(2).filter(|d| !d.is_zero())?;
        let notifier = *self;
        tracing::info!(every = ?interval, "sending watchdog pings to systemd");
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                notifier.send(&[NotifyState::Watchdog]);
            }
        }))
    }
}
