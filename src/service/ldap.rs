//! The company directory (LDAP) as the keeper of passwords: checks a name and password by
//! binding as the user (after finding their entry with a service account, or directly with
//! a DN template), reads the attributes an account is made from (login name, display name,
//! email, admin group), and lists the directory's chat users for the periodic sync. Owns the
//! `ldap_accounts` table: which accounts belong to a directory entry, and so have no password
//! here.
//!
//! Every conversation with the directory opens its own connection (plain, StartTLS or
//! `ldaps://`, verified against `ca_file` or the system's CAs) and runs under one deadline,
//! `ldap.timeout`: a directory that is down or hangs costs a login that long and answers
//! `503`, and nothing here blocks a runtime worker (`ldap3` is asynchronous on tokio). Names
//! are escaped wherever they enter a filter or a DN, so no login name can widen a search.
//!
//! The settings are replaced whole on a configuration reload (SIGHUP), password and CA files
//! read again; a conversation under way finishes with the settings it started with.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};
use ruma::{OwnedUserId, UserId};
use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::clock::Clock;
use crate::{
    Error, Result,
    config::LdapConfig,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        kv::KeyRange,
        tables::{LDAP_ACCOUNTS, LdapAccountRecord},
    },
};

/// What the directory said about a name and password.
#[derive(Debug)]
pub enum Check {
    /// The password is right and the entry may log in.
    Authenticated(DirectoryUser),
    /// Not a user who may log in with this password; the reason is for the log and the
    /// audit record only (the client is told nothing more than "invalid").
    Refused(&'static str),
}

/// A directory entry that authenticated, with the attributes an account is made from.
#[derive(Clone, Debug)]
pub struct DirectoryUser {
    /// The login name as the directory spells it (`uid_attribute`).
    pub uid: String,
    pub dn: String,
    pub display_name: Option<String>,
    pub email: Option<String>,
    /// Whether the entry matches `admin_filter`; `None` when no admin filter is configured.
    pub admin: Option<bool>,
}

/// The directory's chat users, as the periodic sync sees them: lowercased login name →
/// whether it matches `admin_filter` (`None` without one).
pub type Members = HashMap<String, Option<bool>>;

/// The settings of one directory, with the files they name already read.
struct Directory {
    config: LdapConfig,
    uri: String,
    bind_password: Option<String>,
    /// The TLS client settings, for `ldaps://` and StartTLS.
    tls: Option<Arc<rustls::ClientConfig>>,
}

pub struct Ldap {
    directory: RwLock<Option<Arc<Directory>>>,
    accounts: Table<OwnedUserId, LdapAccountRecord>,
    clock: Arc<dyn Clock>,
}

/// Entries asked for at once when listing every user (Active Directory's `MaxPageSize` is
/// 1000, OpenLDAP's default size limit 500).
const PAGE_SIZE: i32 = 500;

/// What a client is told when the directory cannot be asked.
fn unavailable() -> Error {
    Error::Unavailable(
        "The company directory (LDAP) cannot be reached to check the password; try again later".to_owned(),
    )
}

/// The TLS client settings trusting the CAs in `ca_file`, or the system's.
fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("`ldap.ca_file` {}: {e}", path.display()))?;
            for cert in certs {
                roots.add(cert).map_err(|e| format!("`ldap.ca_file` {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("`ldap.ca_file` {} holds no certificate", path.display()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system certificate rustls cannot read is skipped, as every client does.
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings for LDAP: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Directory {
    fn load(config: &LdapConfig) -> Result<Option<Self>, String> {
        let Some(uri) = &config.uri else { return Ok(None) };
        let bind_password = match &config.bind_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("`ldap.bind_password_file` {}: {e}", path.display()))?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            None => None,
        };
        let tls = if uri.starts_with("ldaps://") || config.start_tls || config.ca_file.is_some() {
            Some(tls_config(config.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Some(Self { config: config.clone(), uri: uri.clone(), bind_password, tls }))
    }

    fn timeout(&self) -> Duration {
        self.config.timeout.as_duration()
    }

    /// `(&<filter>(<uid_attribute>=<name>))`, `{username}` in the filter replaced by the
    /// escaped name (or `*` for every user, when `name` is `None`).
    fn user_filter(&self, filter: &str, name: Option<&str>) -> String {
        let value = match name {
            Some(name) => ldap3::ldap_escape(name).into_owned(),
            None => "*".to_owned(),
        };
        let filter = filter.replace("{username}", &value);
        format!("(&{filter}({}={value}))", self.config.uid_attribute)
    }

    /// A new connection, and the task driving it (aborted when the guard is dropped).
    async fn connect(&self) -> Result<(ldap3::Ldap, Driver), ldap3::LdapError> {
        let mut settings =
            LdapConnSettings::new().set_conn_timeout(self.timeout()).set_starttls(self.config.start_tls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(Arc::clone(tls));
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.uri).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended");
            }
        });
        Ok((ldap, Driver(task)))
    }

    /// Bind as the service account (search-then-bind) or anonymously (direct bind, or no
    /// service account); a refusal is the operator's to fix, so it is an error.
    async fn bind_for_search(&self, ldap: &mut ldap3::Ldap) -> Result<(), Failure> {
        let (dn, password) = match (&self.config.bind_dn, &self.bind_password) {
            (Some(dn), Some(password)) if !self.config.direct_bind() => (dn.as_str(), password.as_str()),
            _ => ("", ""),
        };
        let result = ldap.simple_bind(dn, password).await?;
        if result.rc != 0 {
            return Err(Failure::Config(format!(
                "the directory refused the search bind as `{dn}` (result {}: {})",
                result.rc, result.text
            )));
        }
        Ok(())
    }

    /// The entries `filter` finds under `base_dn` (at most `limit`; every one, page by
    /// page, without a limit), with `attrs`. Without a limit, a partial answer (the
    /// directory's own size limit) is an error: the sync must never take a cut-off list
    /// for the whole.
    async fn search(
        &self,
        ldap: &mut ldap3::Ldap,
        filter: &str,
        attrs: &[&str],
        limit: Option<i32>,
    ) -> Result<Vec<SearchEntry>, Failure> {
        let attrs = attrs.to_vec();
        let base = self.config.base_dn.as_str();
        let (entries, result) = match limit {
            Some(limit) => {
                ldap.with_search_options(SearchOptions::new().sizelimit(limit));
                let ldap3::SearchResult(entries, result) =
                    ldap.search(base, Scope::Subtree, filter, attrs).await?;
                // 4: more entries than the size limit; those returned are enough to know it.
                if result.rc == 4 {
                    return Ok(entries.into_iter().map(SearchEntry::construct).collect());
                }
                (entries, result)
            }
            None => {
                let mut stream = ldap
                    .streaming_search_with(
                        ldap3::adapters::PagedResults::new(PAGE_SIZE),
                        base,
                        Scope::Subtree,
                        filter,
                        attrs,
                    )
                    .await?;
                let mut entries = Vec::new();
                while let Some(entry) = stream.next().await? {
                    if !entry.is_ref() && !entry.is_intermediate() {
                        entries.push(entry);
                    }
                }
                (entries, stream.finish().await)
            }
        };
        if result.rc != 0 {
            return Err(Failure::Config(format!(
                "searching `{base}` for `{filter}` failed (result {}: {})",
                result.rc, result.text
            )));
        }
        Ok(entries.into_iter().map(SearchEntry::construct).collect())
    }

    /// The whole check of a name and password, on one connection.
    async fn check(&self, name: &str, password: &str) -> Result<Check, Failure> {
        let (mut ldap, _driver) = self.connect().await?;
        let attrs = [
            self.config.uid_attribute.as_str(),
            self.config.name_attribute.as_str(),
            self.config.mail_attribute.as_str(),
        ];
        let filter = self.user_filter(&self.config.filter, Some(name));
        let entry = if self.config.direct_bind() {
            let template = self.config.bind_dn.as_deref().unwrap_or_default();
            let dn = template.replace("{username}", &ldap3::dn_escape(name));
            if let Some(refused) = user_bind(&mut ldap, &dn, password).await? {
                return Ok(Check::Refused(refused));
            }
            // Bound as the user: their entry must match the filter too.
            match self.search(&mut ldap, &filter, &attrs, Some(2)).await?.as_slice() {
                [entry] => entry.clone(),
                [] => return Ok(Check::Refused("not matching the filter")),
                _ => return Ok(Check::Refused("several directory entries have this name")),
            }
        } else {
            self.bind_for_search(&mut ldap).await?;
            let entry = match self.search(&mut ldap, &filter, &attrs, Some(2)).await?.as_slice() {
                [entry] => entry.clone(),
                [] => return Ok(Check::Refused("not in the directory or not matching the filter")),
                _ => return Ok(Check::Refused("several directory entries have this name")),
            };
            if let Some(refused) = user_bind(&mut ldap, &entry.dn, password).await? {
                return Ok(Check::Refused(refused));
            }
            entry
        };
        let Some(uid) = attribute(&entry, &self.config.uid_attribute) else {
            return Err(Failure::Config(format!(
                "the entry `{}` has no `{}` attribute",
                entry.dn, self.config.uid_attribute
            )));
        };
        // Asked with the rights of whoever is bound now: the user (after their bind), which
        // directories let read their own entry and group memberships.
        let admin = match &self.config.admin_filter {
            Some(admin_filter) => {
                let filter = self.user_filter(admin_filter, Some(&uid));
                Some(!self.search(&mut ldap, &filter, &["1.1"], Some(1)).await?.is_empty())
            }
            None => None,
        };
        let _ = ldap.unbind().await;
        Ok(Check::Authenticated(DirectoryUser {
            uid,
            dn: entry.dn.clone(),
            display_name: attribute(&entry, &self.config.name_attribute),
            email: attribute(&entry, &self.config.mail_attribute),
            admin,
        }))
    }

    /// Every entry that may log in, and whether each is an admin.
    async fn members(&self) -> Result<Members, Failure> {
        let (mut ldap, _driver) = self.connect().await?;
        self.bind_for_search(&mut ldap).await?;
        let uid_attribute = self.config.uid_attribute.as_str();
        let filter = self.user_filter(&self.config.filter, None);
        let mut members = Members::new();
        for entry in self.search(&mut ldap, &filter, &[uid_attribute], None).await? {
            if let Some(uid) = attribute(&entry, uid_attribute) {
                members.insert(uid.to_lowercase(), None);
            }
        }
        if let Some(admin_filter) = &self.config.admin_filter {
            for member in members.values_mut() {
                *member = Some(false);
            }
            let filter = self.user_filter(admin_filter, None);
            for entry in self.search(&mut ldap, &filter, &[uid_attribute], None).await? {
                if let Some(member) =
                    attribute(&entry, uid_attribute).and_then(|uid| members.get_mut(&uid.to_lowercase()))
                {
                    *member = Some(true);
                }
            }
        }
        let _ = ldap.unbind().await;
        Ok(members)
    }
}

/// The task driving one connection; dropping it ends the connection, whatever state the
/// conversation was left in (a deadline passed mid-way).
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a conversation with the directory failed: the connection (down, TLS refused, timed
/// out) or the directory's answer to the server's own requests (misconfiguration).
#[derive(Debug)]
enum Failure {
    Connection(ldap3::LdapError),
    Config(String),
}

impl From<ldap3::LdapError> for Failure {
    fn from(e: ldap3::LdapError) -> Self {
        Self::Connection(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection(e) => write!(f, "{e}"),
            Self::Config(e) => f.write_str(e),
        }
    }
}

/// Bind as a user; `Some(reason)` when the directory refuses the password. An empty
/// password is refused without asking: LDAP takes a bind without one as anonymous, and
/// says yes.
async fn user_bind(
    ldap: &mut ldap3::Ldap,
    dn: &str,
    password: &str,
) -> Result<Option<&'static str>, Failure> {
    if password.is_empty() {
        return Ok(Some("empty password"));
    }
    let result = ldap.simple_bind(dn, password).await?;
    Ok(match result.rc {
        0 => None,
        // invalidCredentials; inappropriateAuthentication; insufficientAccessRights;
        // unwillingToPerform (a locked or expired account, in some directories).
        49 => Some("wrong password or no such entry"),
        48 | 50 | 53 => Some("the directory refused the bind"),
        rc => {
            return Err(Failure::Config(format!("binding as `{dn}` failed (result {rc}: {})", result.text)));
        }
    })
}

/// The first value of `name` on the entry (attribute names are case-insensitive), if any
/// and not blank.
fn attribute(entry: &SearchEntry, name: &str) -> Option<String> {
    entry
        .attrs
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, values)| values.first())
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

impl Ldap {
    pub fn new(store: &Arc<dyn KvStore>, config: &LdapConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        let directory = Directory::load(config).map_err(|e| Error::internal(format!("LDAP: {e}")))?;
        Ok(Self {
            directory: RwLock::new(directory.map(Arc::new)),
            accounts: LDAP_ACCOUNTS.open(store),
            clock,
        })
    }

    fn current(&self) -> Option<Arc<Directory>> {
        self.directory.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether LDAP login is configured.
    pub fn enabled(&self) -> bool {
        self.current().is_some()
    }

    /// How often the directory sync runs; `None` when LDAP or the sync is off.
    pub fn sync_interval(&self) -> Option<Duration> {
        self.current()?.config.sync_interval.map(|d| d.as_duration())
    }

    /// The directory entry an account belongs to, if it is a directory account.
    pub fn account(&self, user_id: &UserId) -> Result<Option<LdapAccountRecord>> {
        Ok(self.accounts.get(&user_id.to_owned())?)
    }

    /// Every directory account.
    pub fn accounts(&self) -> Result<Vec<(OwnedUserId, LdapAccountRecord)>> {
        Ok(self.accounts.scan(KeyRange::all(), Direction::Forward)?.collect::<Result<_, _>>()?)
    }

    /// Queue the record that `user_id` belongs to the directory entry `user`.
    pub fn link_in(&self, batch: &mut WriteBatch, user_id: &UserId, user: &DirectoryUser) -> Result<()> {
        let record =
            LdapAccountRecord { uid: user.uid.clone(), dn: user.dn.clone(), linked_ms: self.clock.now_ms() };
        Ok(self.accounts.put(batch, &user_id.to_owned(), &record)?)
    }

    /// Whether `config` can be applied: its files are readable and its CA file holds
    /// certificates.
    pub fn check_config(config: &LdapConfig) -> Result<(), String> {
        Directory::load(config).map(drop)
    }

    /// Use `config` from now on (a configuration reload); conversations under way finish
    /// with the settings they started with.
    pub fn replace_config(&self, config: &LdapConfig) -> Result<(), String> {
        let directory = Directory::load(config)?.map(Arc::new);
        *self.directory.write().unwrap_or_else(std::sync::PoisonError::into_inner) = directory;
        Ok(())
    }

    /// Check `name` (a login name as typed, a valid localpart) and `password` against the
    /// directory. `Err` (`503`) when the directory cannot be asked within the timeout or
    /// answers the server's own requests with an error; the cause is logged.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<Check> {
        let Some(directory) = self.current() else { return Ok(Check::Refused("LDAP is off")) };
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(directory.timeout(), directory.check(name, password)).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(Ok(check)) => {
                tracing::debug!(
                    elapsed_ms,
                    authenticated = matches!(check, Check::Authenticated(_)),
                    "LDAP check"
                );
                Ok(check)
            }
            Ok(Err(failure)) => {
                tracing::warn!(uri = %directory.uri, error = %failure, elapsed_ms, "LDAP login check failed");
                Err(unavailable())
            }
            Err(_) => {
                tracing::warn!(uri = %directory.uri, timeout_ms = directory.config.timeout.as_millis(), "LDAP did not answer in time");
                Err(unavailable())
            }
        }
    }

    /// The directory's chat users, for the sync. `Err` when the directory cannot be asked:
    /// the sync then changes nothing.
    pub async fn members(&self) -> Result<Option<Members>> {
        let Some(directory) = self.current() else { return Ok(None) };
        match tokio::time::timeout(directory.timeout(), directory.members()).await {
            Ok(Ok(members)) => Ok(Some(members)),
            Ok(Err(failure)) => {
                tracing::warn!(uri = %directory.uri, error = %failure, "listing LDAP users failed");
                Err(unavailable())
            }
            Err(_) => {
                tracing::warn!(uri = %directory.uri, "LDAP did not answer the user listing in time");
                Err(unavailable())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_into_filters_and_every_user_is_a_wildcard() {
        let config = LdapConfig {
            uri: Some("ldap://127.0.0.1:389".to_owned()),
            filter: "(|(memberOf=cn=chat,dc=x)(uid={username}))".to_owned(),
            ..LdapConfig::default()
        };
        let directory = Directory::load(&config).unwrap().unwrap();
        for (name, filter) in [
            ("alice", "(&(|(memberOf=cn=chat,dc=x)(uid=alice))(uid=alice))"),
            ("*", "(&(|(memberOf=cn=chat,dc=x)(uid=\\2a))(uid=\\2a))"),
            ("a)(uid=*", "(&(|(memberOf=cn=chat,dc=x)(uid=a\\29\\28uid=\\2a))(uid=a\\29\\28uid=\\2a))"),
            ("a\\b\0", "(&(|(memberOf=cn=chat,dc=x)(uid=a\\5cb\\00))(uid=a\\5cb\\00))"),
        ] {
            assert_eq!(directory.user_filter(&config.filter, Some(name)), filter, "{name:?}");
        }
        assert_eq!(
            directory.user_filter(&config.filter, None),
            "(&(|(memberOf=cn=chat,dc=x)(uid=*))(uid=*))"
        );
    }

    #[test]
    fn tls_settings_need_a_readable_ca_file() {
        let config = LdapConfig {
            uri: Some("ldaps://ldap.example.org".to_owned()),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..LdapConfig::default()
        };
        let error = Directory::load(&config).err().unwrap();
        assert!(error.contains("ldap.ca_file"), "{error}");
        assert!(Directory::load(&LdapConfig::default()).unwrap().is_none(), "no uri, no directory");
    }
}
