//! Which process runs the work that must run once per server: the outbox's deliveries
//! (pushers, email, appservices, federation), the expiry sweeps and retention, delayed
//! events and the LDAP sync. A process that holds the database alone always leads. With
//! several processes on one PostgreSQL database, the leader is whichever holds the
//! `background` role (a session advisory lock, [`KvStore::lead`]); the others ask for it
//! every second, so when the leader dies or loses the database, another takes over within
//! about a second of the database noticing.
//!
//! Owns no tables.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::storage::KvStore;

/// The role's name (its lock key is derived from it).
const ROLE: &str = "background";
/// How often a process that does not lead asks for the role, and one that leads checks
/// that it still holds it (no round trip while its connection lasts).
const ASK_EVERY: Duration = Duration::from_secs(1);

pub struct Leader {
    store: Arc<dyn KvStore>,
    multi_process: bool,
    leading: watch::Sender<bool>,
}

impl Leader {
    pub fn new(store: &Arc<dyn KvStore>, multi_process: bool) -> Self {
        Self { store: Arc::clone(store), multi_process, leading: watch::channel(!multi_process).0 }
    }

    /// Whether this process leads now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Hear each change of leadership (the current value first).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Ask for the role until `stop` (multi-process only; a process alone leads from the
    /// start). A failed ask (the database unreachable) counts as not leading: the work stops
    /// here rather than risk running beside a leader that still reaches the database.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if !self.multi_process {
            return;
        }
        let mut tick = tokio::time::interval(ASK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    self.leading.send_replace(false);
                    return;
                }
            }
            let store = Arc::clone(&self.store);
            let asked = tokio::task::spawn_blocking(move || store.lead(ROLE)).await;
            let leads = match asked {
                Ok(Ok(leads)) => leads,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "asking the database who leads failed");
                    false
                }
                Err(_) => false,
            };
            let changed = self.leading.send_if_modified(|was| std::mem::replace(was, leads) != leads);
            if changed {
                if leads {
                    tracing::info!("this process now runs the server's deliveries and background jobs");
                } else {
                    tracing::warn!("this process no longer leads: its deliveries and background jobs stop");
                }
            }
        }
    }
}
