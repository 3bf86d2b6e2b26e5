//! Live reload: the configuration read again while the server runs (SIGHUP, `systemctl
//! reload`) and handed to each part of the server that can take it without a restart.
//!
//! # Adding a live-reloadable part
//!
//! Implement [`LiveReload`] for the thing that holds the setting (the log filter in
//! `logging.rs` is the example; TLS certificates, rate limits and appservice files belong
//! here too) and register it once with [`Reloader::register`] where that thing is built:
//! `main.rs` for what the binary owns (the log filter, listeners), `Server::build` for what
//! services own. Its [`LiveReload::keys`] leave the "needs a restart" report; its
//! [`LiveReload::check`] can reject a configuration before anything changes.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::{Map, Value as JsonValue};

use crate::config::Config;

/// One part of the running server that takes a new configuration in place.
pub trait LiveReload: Send + Sync {
    /// What it is, for logs and the reload report (e.g. `"log level"`).
    fn name(&self) -> &'static str;

    /// The top-level configuration keys it applies live. A change to any other key is
    /// reported as needing a restart.
    fn keys(&self) -> &'static [&'static str];

    /// Whether `new` can be applied (files readable, values valid). An error rejects the
    /// whole reload before any part changes.
    fn check(&self, _new: &Config) -> Result<(), String> {
        Ok(())
    }

    /// Apply `new`. Called on every reload once every part's check has passed, whether or
    /// not its keys changed: a part that reads files (certificates) re-reads them.
    fn apply(&self, new: &Config) -> Result<(), String>;
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// The parts that applied the new configuration.
    pub applied: Vec<&'static str>,
    /// Keys whose new value differs from the one the server runs with and that no part
    /// applies live: they take effect at the next start.
    pub needs_restart: Vec<String>,
}

/// The live-reloadable parts and the configuration the server runs with.
pub struct Reloader {
    /// The running configuration as JSON: start-up values, with live keys updated as they
    /// are applied.
    running: Mutex<Map<String, JsonValue>>,
    parts: Mutex<Vec<Arc<dyn LiveReload>>>,
    /// One reload at a time.
    in_progress: tokio::sync::Mutex<()>,
}

fn as_map(config: &Config) -> Map<String, JsonValue> {
    match serde_json::to_value(config) {
        Ok(JsonValue::Object(map)) => map,
        _ => Map::new(),
    }
}

impl Reloader {
    /// For a server started with `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            running: Mutex::new(as_map(config)),
            parts: Mutex::new(Vec::new()),
            in_progress: tokio::sync::Mutex::new(()),
        }
    }

    /// Add a part that takes new configurations from now on.
    pub fn register(&self, part: Arc<dyn LiveReload>) {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner).push(part);
    }

    /// Read the configuration again the way start-up did (`path`, then `CONDUIT_*`
    /// variables) and apply it. An error means the configuration was rejected and nothing
    /// changed.
    pub async fn reload_from(&self, path: Option<&Path>) -> Result<ReloadReport, String> {
        let loaded = Config::load(path)?;
        for key in &loaded.unknown_keys {
            tracing::warn!(key = %key, "unknown configuration key ignored");
        }
        self.reload(&loaded.config).await
    }

    /// Hand a checked configuration to every part: first every part checks it (any error
    /// rejects it whole), then every part applies it.
    pub async fn reload(&self, new: &Config) -> Result<ReloadReport, String> {
        let _one_at_a_time = self.in_progress.lock().await;
        let parts: Vec<_> = self.parts.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let new_map = as_map(new);
        let live: Vec<&str> = parts.iter().flat_map(|p| p.keys().iter().copied()).collect();
        let changed: Vec<String> = {
            let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            let mut changed: Vec<String> = new_map
                .iter()
                .filter(|(key, value)| running.get(key.as_str()) != Some(*value))
                .map(|(key, _)| key.clone())
                .collect();
            changed.sort();
            changed
        };
        if let Some(key) = changed.iter().find(|k| k.as_str() == "server_name") {
            return Err(format!("`{key}` cannot change for an existing database"));
        }
        for part in &parts {
            part.check(new).map_err(|e| format!("{}: {e}", part.name()))?;
        }
        let mut report = ReloadReport::default();
        let mut failed = None;
        for part in &parts {
            // After a successful check an apply error is unexpected; the other parts still
            // apply, and the first error is the reload's answer.
            match part.apply(new) {
                Ok(()) => report.applied.push(part.name()),
                Err(e) => {
                    failed.get_or_insert(format!("{}: {e}", part.name()));
                }
            }
        }
        if let Some(error) = failed {
            return Err(error);
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for key in changed {
            if live.contains(&key.as_str()) {
                if let Some(value) = new_map.get(&key) {
                    running.insert(key, value.clone());
                }
            } else {
                report.needs_restart.push(key);
            }
        }
        Ok(report)
    }
}

/// Rate limits change live: the master switch, the admin exemption and every `rc_*` rate.
impl LiveReload for crate::service::rate_limits::RateLimits {
    fn name(&self) -> &'static str {
        "rate limits"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[
            "rate_limiting",
            "rate_limit_exempt_admins",
            "rc_message",
            "rc_registration",
            "rc_registration_token_validity",
            "rc_login",
            "rc_admin_redaction",
            "rc_joins",
            "rc_joins_per_room",
            "rc_invites",
            "rc_3pid_validation",
            "rc_media_create",
            "rc_presence",
            "rc_delayed_event_mgmt",
            "rc_reports",
            "rc_room_creation",
            "rc_user_directory",
            "rc_key_requests",
        ]
    }

    fn apply(&self, new: &Config) -> Result<(), String> {
        self.reload(new);
        Ok(())
    }
}

/// Application service registrations are read again from their files at every reload
/// (their contents may change while the list of files does not); a file that fails its
/// checks, or conflicts with a registration added through the admin API, rejects the reload
/// and the registrations in force stay. Queues of appservices new to the set start from now.
impl LiveReload for crate::service::appservice_sender::AppserviceSender {
    fn name(&self) -> &'static str {
        "application services"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["app_service_config_files"]
    }

    fn check(&self, new: &Config) -> Result<(), String> {
        self.appservices().check_files(&new.app_service_config_files)
    }

    fn apply(&self, new: &Config) -> Result<(), String> {
        self.appservices().reload_files(&new.app_service_config_files)?;
        self.open_queues().map_err(|e| e.to_string())
    }
}

/// LDAP login's settings change live: the directory's address, search, filters and TLS,
/// the service account's password file and the CA file read again; a file that cannot be
/// read rejects the reload. A sync interval newly set starts within a minute.
impl LiveReload for crate::service::ldap::Ldap {
    fn name(&self) -> &'static str {
        "LDAP login"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["ldap"]
    }

    fn check(&self, new: &Config) -> Result<(), String> {
        Self::check_config(&new.ldap)
    }

    fn apply(&self, new: &Config) -> Result<(), String> {
        self.replace_config(&new.ldap)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting {
        applied: AtomicUsize,
        refuse: &'static str,
    }

    impl LiveReload for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn keys(&self) -> &'static [&'static str] {
            &["log"]
        }
        fn check(&self, new: &Config) -> Result<(), String> {
            if new.log == self.refuse { Err("refused".to_owned()) } else { Ok(()) }
        }
        fn apply(&self, _: &Config) -> Result<(), String> {
            self.applied.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn live_keys_apply_others_wait_for_a_restart_and_a_refused_config_changes_nothing() {
        let start = Config::default();
        let reloader = Reloader::new(&start);
        let part = Arc::new(Counting { applied: AtomicUsize::new(0), refuse: "bad" });
        reloader.register(part.clone());

        let same = reloader.reload(&start).await.unwrap();
        assert_eq!(same, ReloadReport { applied: vec!["counting"], needs_restart: vec![] });

        let mut changed = start.clone();
        changed.log = "debug".to_owned();
        changed.max_request_size += 1;
        let report = reloader.reload(&changed).await.unwrap();
        assert_eq!(report.needs_restart, vec!["max_request_size".to_owned()]);
        assert_eq!(part.applied.load(Ordering::SeqCst), 2);
        // Still differs from what runs: reported again; the live key is now the running one.
        let again = reloader.reload(&changed).await.unwrap();
        assert_eq!(again.needs_restart, vec!["max_request_size".to_owned()]);

        let mut refused = changed.clone();
        refused.log = "bad".to_owned();
        assert_eq!(reloader.reload(&refused).await.unwrap_err(), "counting: refused");
        assert_eq!(part.applied.load(Ordering::SeqCst), 3, "nothing applied");

        let mut renamed = changed;
        renamed.server_name = "other.example".try_into().unwrap();
        assert!(reloader.reload(&renamed).await.unwrap_err().contains("server_name"));
    }
}
