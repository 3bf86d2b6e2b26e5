//! The directory sync: every `ldap.sync_interval` (on the server's clock), the accounts made
//! from the LDAP directory are compared with the directory's chat users. An account whose
//! entry is gone, or no longer matches `ldap.filter`, is deactivated the way an admin
//! deactivates one (devices, keys and rooms go), and each deactivation is in the audit log;
//! with `ldap.admin_filter`, admin flags follow the directory. A directory that cannot be
//! asked changes nothing, and neither does an answer listing nobody at all while accounts
//! exist (a wrong base DN must not deactivate everyone). Owns no table.

use std::{sync::Arc, time::Duration};

use ruma::OwnedUserId;
use serde_json::json;
use tokio::sync::watch;

use super::{
    accounts::Accounts,
    admin::Admin,
    audit::{self, Audit},
    clock::Clock,
    context::{Actor, RequestContext},
    ldap::Ldap,
    users::Users,
};
use crate::Result;

/// How often the task looks again whether a sync is configured, while none is.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Directory accounts compared.
    pub checked: usize,
    pub deactivated: Vec<OwnedUserId>,
    /// Accounts whose admin flag changed, with the new flag.
    pub admin_changed: Vec<(OwnedUserId, bool)>,
}

pub struct LdapSync {
    ldap: Arc<Ldap>,
    admin: Arc<Admin>,
    users: Arc<Users>,
    accounts: Arc<Accounts>,
    audit: Arc<Audit>,
    clock: Arc<dyn Clock>,
}

impl LdapSync {
    pub fn new(
        ldap: Arc<Ldap>,
        admin: Arc<Admin>,
        users: Arc<Users>,
        accounts: Arc<Accounts>,
        audit: Arc<Audit>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { ldap, admin, users, accounts, audit, clock }
    }

    /// Sync every `ldap.sync_interval` until `stop` changes. The interval is read again
    /// after each wait, so a reload that turns the sync on or off takes effect within one.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let interval = self.ldap.sync_interval();
            let wait_ms = interval.unwrap_or(IDLE_RECHECK).as_millis() as u64;
            let at = self.clock.now_ms().saturating_add(wait_ms);
            // The wall clock may wake a sleeper early: wait again until the time has come.
            while self.clock.now_ms() < at {
                tokio::select! {
                    _ = self.clock.sleep_until(at) => {}
                    _ = stop.changed() => return,
                }
            }
            if interval.is_none() || self.ldap.sync_interval().is_none() {
                continue;
            }
            match self.sync_once().await {
                Ok(report) if !report.deactivated.is_empty() || !report.admin_changed.is_empty() => {
                    tracing::info!(
                        checked = report.checked,
                        deactivated = report.deactivated.len(),
                        admin_changed = report.admin_changed.len(),
                        "LDAP sync changed accounts"
                    );
                }
                Ok(report) => tracing::debug!(checked = report.checked, "LDAP sync found nothing to change"),
                Err(e) => tracing::warn!(error = %e, "LDAP sync skipped"),
            }
        }
    }

    /// Compare the directory accounts with the directory once.
    pub async fn sync_once(&self) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let Some(members) = self.ldap.members().await? else { return Ok(report) };
        let accounts = self.ldap.accounts()?;
        if members.is_empty() && !accounts.is_empty() {
            tracing::warn!(
                accounts = accounts.len(),
                "the LDAP directory lists no user at all; deactivating nobody (check `ldap.base_dn` and `ldap.filter`)"
            );
            return Ok(report);
        }
        let context = RequestContext::internal(Actor::Server, "LDAP sync");
        for (user_id, linked) in accounts {
            let Some(record) = self.users.get(&user_id)? else { continue };
            if record.deactivated {
                continue;
            }
            report.checked += 1;
            match members.get(&linked.uid.to_lowercase()) {
                None => {
                    self.admin.deactivate(&user_id, false).await?;
                    let entry = audit::Entry::success("account.deactivate").target(&user_id).params(json!({
                        "erase": false,
                        "reason": "no longer in the LDAP directory or its filter",
                        "dn": linked.dn,
                    }));
                    self.audit.record_or_log(&context, entry);
                    tracing::info!(%user_id, dn = %linked.dn, "deactivated: gone from the LDAP directory");
                    report.deactivated.push(user_id);
                }
                Some(Some(admin)) if *admin != record.admin => {
                    self.accounts.set_admin(&context, &user_id, *admin)?;
                    report.admin_changed.push((user_id, *admin));
                }
                Some(_) => {}
            }
        }
        Ok(report)
    }
}
