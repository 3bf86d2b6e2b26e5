//! Application services: the registrations the server serves, and the questions the rest of
//! the server asks of them (whose token is this, who owns this user or alias exclusively,
//! which appservices care about this room), and the requests the server makes to them
//! (transactions, queries, pings, third-party lookups).
//!
//! Registrations come from two places: the files named in `app_service_config_files`, read
//! at start-up and again on reload, and those added while the server runs through the admin
//! API (or `conduit appservice add`), kept in the `appservice_registrations` table, which
//! this service owns, and read with the same checks at every start. Both serve side by side
//! and are checked together (no shared ID, token or sender). A reload whose files fail their
//! checks, or conflict with a registration added at run time, is refused and the
//! registrations in force stay; at start-up, a stored registration that conflicts with the
//! files is left out (and listed with why) so that the server starts and the operator can
//! remove one of them.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use ruma::{OwnedServerName, RoomAliasId, UserId};

use serde_json::{Value as JsonValue, json};

use super::{
    audit::{self, Audit},
    clock::Clock,
    context::RequestContext,
    outbox::Delivery,
};
use crate::{
    Error, Result,
    matrix::appservice::{self, NamespaceKind, Registration},
    storage::{
        Direction, KvStore, Table, WriteBatch,
        kv::KeyRange,
        tables::{APPSERVICE_REGISTRATIONS, AppserviceRegistrationRecord},
    },
};

/// Where a registration in force comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file named in `app_service_config_files`.
    File(PathBuf),
    /// Added at run time (admin API or command line), stored in the database.
    Stored { added_ms: u64 },
}

/// A registration added at run time that is not in force, and why.
#[derive(Clone, Debug)]
pub struct Shelved {
    pub id: String,
    pub added_ms: u64,
    pub problem: String,
}

/// The registrations in force.
#[derive(Default)]
pub struct Registry {
    pub list: Vec<Arc<Registration>>,
    /// Where each registration in `list` comes from, by ID.
    sources: HashMap<String, Source>,
    /// Stored registrations left out at start-up (they conflict with the files).
    pub shelved: Vec<Shelved>,
}

impl Registry {
    /// The appservice whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<&Arc<Registration>> {
        self.list.iter().find(|r| constant_time_eq(r.as_token.as_bytes(), token.as_bytes()))
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Registration>> {
        self.list.iter().find(|r| r.id == id)
    }

    /// Where the registration `id` in force comes from.
    pub fn source(&self, id: &str) -> Option<&Source> {
        self.sources.get(id)
    }

    /// The appservice that claims `id` in an exclusive namespace of `kind`.
    pub fn exclusive_owner(&self, kind: NamespaceKind, id: &str) -> Option<&Arc<Registration>> {
        self.list.iter().find(|r| {
            r.claims_exclusively(kind, id) || (kind == NamespaceKind::Users && r.sender.as_str() == id)
        })
    }
}

/// Compare secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Read and check each file, and the set together. The error names the file and the field.
pub fn load_files(
    files: &[PathBuf],
    server: &OwnedServerName,
) -> std::result::Result<Vec<Registration>, String> {
    let mut loaded = Vec::with_capacity(files.len());
    for path in files {
        loaded.push(load_file(path, server)?);
    }
    if let Some(conflict) = appservice::conflicts(&loaded.iter().collect::<Vec<_>>()) {
        return Err(format!("application service registrations: {conflict}"));
    }
    Ok(loaded)
}

/// Read and check one registration file.
pub fn load_file(path: &Path, server: &OwnedServerName) -> std::result::Result<Registration, String> {
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    if metadata.len() > appservice::MAX_REGISTRATION_BYTES as u64 {
        return Err(format!("{shown}: larger than {} bytes", appservice::MAX_REGISTRATION_BYTES));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    appservice::parse_registration(&text, server).map_err(|e| format!("{shown}: {e}"))
}

/// How long an appservice may take to accept a transaction.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a query, ping or third-party lookup to an appservice may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to an appservice may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an appservice's answer to a query or ping that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The largest answer to a third-party lookup taken (a bridge to many networks describes
/// each of them in its protocol's metadata).
const MAX_LOOKUP_BYTES: usize = 1024 * 1024;

pub struct Appservices {
    server_name: OwnedServerName,
    current: RwLock<Arc<Registry>>,
    /// Registrations added at run time, by ID.
    stored: Table<String, AppserviceRegistrationRecord>,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    audit: Arc<Audit>,
    /// The files in force, for rebuilding the set when a stored registration is added or
    /// removed.
    files: Mutex<(Vec<PathBuf>, Vec<Registration>)>,
    /// One change of the set at a time (a reload, an addition, a removal).
    changing: Mutex<()>,
    /// Requests to appservices. Their URLs come from the operator (registration files or
    /// the admin API), not from users, so the address guard that keeps user-named URLs off
    /// internal addresses does not apply (bridges run on loopback or the LAN, as with
    /// Synapse); the client follows no redirects and uses no proxy.
    http: reqwest::Client,
}

impl Appservices {
    /// Read the configured registration files (any error stops the server from starting)
    /// and the registrations stored at run time.
    pub fn new(
        store: &Arc<dyn KvStore>,
        clock: Arc<dyn Clock>,
        audit: Arc<Audit>,
        server_name: OwnedServerName,
        files: Vec<PathBuf>,
    ) -> Result<Self> {
        let loaded = load_files(&files, &server_name)
            .map_err(|e| Error::internal(format!("app_service_config_files: {e}")))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("conduit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("building the appservice HTTP client: {e}")))?;
        let me = Self {
            server_name,
            current: RwLock::new(Arc::new(Registry::default())),
            stored: APPSERVICE_REGISTRATIONS.open(store),
            store: Arc::clone(store),
            clock,
            audit,
            files: Mutex::new((Vec::new(), Vec::new())),
            changing: Mutex::new(()),
            http,
        };
        let registry = me.assemble(&files, &loaded, None, None).map_err(Error::internal)?;
        for shelved in &registry.shelved {
            tracing::error!(
                appservice = %shelved.id,
                problem = %shelved.problem,
                "an application service added through the admin API is not in force; remove it or the file it conflicts with"
            );
        }
        *me.files.lock().unwrap_or_else(|p| p.into_inner()) = (files, loaded);
        me.put_in_force(registry);
        Ok(me)
    }

    /// The set made of the files `files` (read as `loaded`) and the stored registrations,
    /// with `extra` (stored in the same breath) among them. A stored registration that
    /// conflicts with the files is left out, unless it is in force in `in_force` (a reload):
    /// then the whole set is refused, so that a reload never takes away a running bridge.
    fn assemble(
        &self,
        files: &[PathBuf],
        loaded: &[Registration],
        in_force: Option<&Registry>,
        extra: Option<(&str, &AppserviceRegistrationRecord)>,
    ) -> std::result::Result<Registry, String> {
        let mut registry = Registry::default();
        for (path, registration) in files.iter().zip(loaded) {
            registry.sources.insert(registration.id.clone(), Source::File(path.clone()));
            registry.list.push(Arc::new(registration.clone()));
        }
        let mut stored = self.stored_rows().map_err(|e| format!("reading stored registrations: {e}"))?;
        if let Some((id, record)) = extra {
            stored.retain(|(other, _)| other != id);
            stored.push((id.to_owned(), record.clone()));
        }
        for (id, record) in stored {
            let shelve = |registry: &mut Registry, problem: String| {
                registry.shelved.push(Shelved { id: id.clone(), added_ms: record.added_ms, problem });
            };
            let registration = match appservice::parse_registration(&record.text, &self.server_name) {
                Ok(registration) => registration,
                Err(e) => {
                    shelve(&mut registry, format!("it no longer passes the checks: {e}"));
                    continue;
                }
            };
            let mut together: Vec<&Registration> = registry.list.iter().map(AsRef::as_ref).collect();
            together.push(&registration);
            if let Some(conflict) = appservice::conflicts(&together) {
                if in_force.is_some_and(|r| matches!(r.source(&id), Some(Source::Stored { .. }))) {
                    return Err(format!(
                        "application service registrations: {conflict} (`{id}` was added through the admin API; \
                         remove it there or change the file)"
                    ));
                }
                shelve(&mut registry, conflict);
                continue;
            }
            registry.sources.insert(id.clone(), Source::Stored { added_ms: record.added_ms });
            registry.list.push(Arc::new(registration));
        }
        Ok(registry)
    }

    fn stored_rows(&self) -> Result<Vec<(String, AppserviceRegistrationRecord)>> {
        self.stored.scan(KeyRange::all(), Direction::Forward)?.map(|row| row.map_err(Into::into)).collect()
    }

    fn put_in_force(&self, registry: Registry) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read and check `files` with the stored registrations, without putting them in force
    /// (a reload's first step).
    pub fn check_files(&self, files: &[PathBuf]) -> std::result::Result<(), String> {
        let loaded = load_files(files, &self.server_name)?;
        self.assemble(files, &loaded, Some(&self.registry()), None).map(|_| ())
    }

    /// Read `files` again and put them in force beside the stored registrations (a reload).
    pub fn reload_files(&self, files: &[PathBuf]) -> std::result::Result<(), String> {
        let _changing = self.lock_changes();
        let loaded = load_files(files, &self.server_name)?;
        let registry = self.assemble(files, &loaded, Some(&self.registry()), None)?;
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = (files.to_vec(), loaded);
        self.put_in_force(registry);
        Ok(())
    }

    /// Register the appservice `text` describes (a registration in YAML or JSON, checked as a
    /// file is), store it and put it in force at once, in the audit log as `appservice.add`.
    /// Refused with the field that is wrong, or with the registration it conflicts with.
    pub fn add(&self, context: &RequestContext, text: &str) -> Result<Arc<Registration>> {
        let registration = appservice::parse_registration(text, &self.server_name)
            .map_err(|e| Error::invalid_param(format!("Invalid registration: {e}")))?;
        let id = registration.id.clone();
        let _changing = self.lock_changes();
        let current = self.registry();
        if let Some(shelved) = current.shelved.iter().find(|s| s.id == id) {
            return Err(Error::invalid_param(format!(
                "`{id}` is already registered through the admin API (not in force: {}); remove it first",
                shelved.problem
            )));
        }
        let mut together: Vec<&Registration> = current.list.iter().map(AsRef::as_ref).collect();
        together.push(&registration);
        if let Some(conflict) = appservice::conflicts(&together) {
            let whose = |other: &str| match current.source(other) {
                Some(Source::File(path)) => {
                    format!(" (`{other}` is registered by the file {})", path.display())
                }
                Some(Source::Stored { .. }) => format!(" (`{other}` was added through the admin API)"),
                None => String::new(),
            };
            let other = current.list.iter().find(|r| appservice::conflicts(&[r, &registration]).is_some());
            let detail = other.map(|r| whose(&r.id)).unwrap_or_default();
            return Err(Error::invalid_param(format!("Conflicting registration: {conflict}{detail}")));
        }
        let record = AppserviceRegistrationRecord { text: text.to_owned(), added_ms: self.clock.now_ms() };
        let registry = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            self.assemble(&files.0, &files.1, None, Some((&id, &record))).map_err(Error::internal)?
        };
        if registry.by_id(&id).is_none() {
            return Err(Error::internal(format!("`{id}` was checked but did not join the registrations")));
        }
        let mut batch = WriteBatch::new();
        self.stored.put(&mut batch, &id, &record)?;
        let entry = audit::Entry::success("appservice.add").target(&id).params(summary(&registration));
        let staged = self.audit.stage(&mut batch, context, entry)?;
        self.store.write(batch)?;
        staged.committed();
        self.put_in_force(registry);
        Ok(Arc::new(registration))
    }

    /// Remove the registration `id` added at run time: its token stops working at once. One
    /// from a file is refused (it says which file); an unknown ID is not found.
    pub fn remove(&self, context: &RequestContext, id: &str) -> Result<()> {
        let _changing = self.lock_changes();
        let current = self.registry();
        if let Some(Source::File(path)) = current.source(id) {
            return Err(Error::invalid_param(format!(
                "`{id}` is registered by the file {}: remove it from app_service_config_files and reload",
                path.display()
            )));
        }
        if self.stored.get(&id.to_owned())?.is_none() {
            return Err(Error::not_found(format!(
                "No application service `{id}` was added through the admin API"
            )));
        }
        let mut batch = WriteBatch::new();
        self.stored.delete(&mut batch, &id.to_owned());
        let staged =
            self.audit.stage(&mut batch, context, audit::Entry::success("appservice.remove").target(id))?;
        self.store.write(batch)?;
        staged.committed();
        let registry = {
            let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            self.assemble(&files.0, &files.1, None, None).map_err(Error::internal)?
        };
        self.put_in_force(registry);
        Ok(())
    }

    /// The HTTP client for requests to appservices (transactions use it too).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `url` of `appservice` with `path` appended to its path.
    pub fn endpoint(appservice: &Registration, path: &str) -> Option<url::Url> {
        let mut url = appservice.url.clone()?;
        let joined = format!("{}{}", url.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        Some(url)
    }

    /// `PUT` one transaction (`txn_id`, `body`) to the appservice, with its `hs_token`: what
    /// became of it, as the outbox's couriers answer (any 2xx takes it; anything else, or no
    /// answer within a minute, is tried again later).
    pub async fn send_transaction(
        &self,
        appservice: &Registration,
        txn_id: &str,
        body: &JsonValue,
    ) -> Delivery {
        let path = format!("/_matrix/app/v1/transactions/{}", encode_segment(txn_id));
        let Some(url) = Self::endpoint(appservice, &path) else {
            return Delivery::Gone("the application service has no URL".to_owned());
        };
        let answer = self
            .http
            .put(url)
            .bearer_auth(&appservice.hs_token)
            .json(body)
            .timeout(TRANSACTION_TIMEOUT)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => Delivery::Done,
            Ok(response) => {
                Delivery::Retry(format!("the application service answered {}", response.status()))
            }
            Err(e) => Delivery::Retry(format!("the application service could not be reached: {e}")),
        }
    }

    /// Ask the appservices whose namespaces hold `alias` (exclusive or not) whether it
    /// exists, as the spec's room alias query: one that answers 200 has created it. Whether
    /// any did.
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        let path = format!("/_matrix/app/v1/rooms/{}", encode_segment(alias.as_str()));
        self.query(NamespaceKind::Aliases, alias.as_str(), &path).await
    }

    /// Ask the appservices whose namespaces hold `user_id` whether the user exists (the
    /// user query): one that answers 200 has registered it. Whether any did.
    pub async fn query_user(&self, user_id: &UserId) -> bool {
        let path = format!("/_matrix/app/v1/users/{}", encode_segment(user_id.as_str()));
        self.query(NamespaceKind::Users, user_id.as_str(), &path).await
    }

    async fn query(&self, kind: NamespaceKind, id: &str, path: &str) -> bool {
        let registry = self.registry();
        for appservice in registry.list.iter().filter(|a| a.claims(kind, id)) {
            let Some(url) = Self::endpoint(appservice, path) else { continue };
            let answer =
                self.http.get(url).bearer_auth(&appservice.hs_token).timeout(QUERY_TIMEOUT).send().await;
            match answer {
                Ok(response) if response.status().is_success() => return true,
                Ok(response) => {
                    tracing::debug!(appservice = %appservice.id, id, status = %response.status(), "appservice query: not found");
                }
                Err(e) => {
                    tracing::warn!(appservice = %appservice.id, id, error = %e, "appservice query failed")
                }
            }
        }
        false
    }

    /// `GET` `path` with `query` from each of `appservices` at once (with its `hs_token`),
    /// each bounded by the query timeout, so one that hangs holds up the answer by that much
    /// and no more: the JSON each answered, in the order given. One without a URL, that
    /// answers an error (404: it knows nothing), fails, times out or answers something that
    /// is not JSON is left out (and logged).
    pub async fn get_json_from_each(
        &self,
        appservices: &[Arc<Registration>],
        path: &str,
        query: &[(String, String)],
    ) -> Vec<(Arc<Registration>, JsonValue)> {
        let mut asked = tokio::task::JoinSet::new();
        for (index, appservice) in appservices.iter().enumerate() {
            let Some(url) = Self::endpoint(appservice, path) else { continue };
            let request =
                self.http.get(url).query(query).bearer_auth(&appservice.hs_token).timeout(QUERY_TIMEOUT);
            let id = appservice.id.clone();
            let path = path.to_owned();
            asked.spawn(async move {
                let answer = match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        read_limited(response, MAX_LOOKUP_BYTES).await.and_then(|bytes| {
                            serde_json::from_slice::<JsonValue>(&bytes).map_err(|e| format!("not JSON: {e}"))
                        })
                    }
                    Ok(response) if response.status() == reqwest::StatusCode::NOT_FOUND => {
                        tracing::debug!(appservice = %id, path, "appservice lookup: nothing found");
                        return None;
                    }
                    Ok(response) => Err(format!("answered {}", response.status())),
                    Err(e) if e.is_timeout() => Err("did not answer in time".to_owned()),
                    Err(e) => Err(format!("could not be reached: {e}")),
                };
                match answer {
                    Ok(json) => Some((index, json)),
                    Err(why) => {
                        tracing::warn!(appservice = %id, path, reason = %why, "appservice lookup failed");
                        None
                    }
                }
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = asked.join_next().await {
            if let Ok(Some(answer)) = joined {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(index, _)| *index);
        answers.into_iter().map(|(index, json)| (Arc::clone(&appservices[index]), json)).collect()
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping`: ping the appservice's
    /// `/_matrix/app/v1/ping` with `transaction_id`; the time it took, or the error the spec
    /// names for how it failed.
    pub async fn ping(&self, appservice: &Registration, transaction_id: Option<&str>) -> Result<Duration> {
        use ruma::api::error::{BadStatusErrorData, ErrorKind};
        let url = Self::endpoint(appservice, "/_matrix/app/v1/ping")
            .ok_or_else(|| Error::new(ErrorKind::UrlNotSet, "The application service has no URL to ping"))?;
        let mut body = serde_json::Map::new();
        if let Some(txn) = transaction_id {
            body.insert("transaction_id".into(), txn.into());
        }
        let started = std::time::Instant::now();
        let answer = self
            .http
            .post(url)
            .bearer_auth(&appservice.hs_token)
            .json(&body)
            .timeout(QUERY_TIMEOUT)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => Ok(started.elapsed()),
            Ok(response) => {
                let mut data = BadStatusErrorData::new();
                data.status = Some(response.status());
                let bytes = response.bytes().await.unwrap_or_default();
                data.body =
                    Some(String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_ANSWER_BYTES)]).into_owned());
                Err(Error::new(ErrorKind::BadStatus(data), "The application service answered an error"))
            }
            Err(e) if e.is_timeout() => Err(Error::new(
                ErrorKind::ConnectionTimeout,
                "The application service did not answer in time",
            )),
            Err(e) => Err(Error::new(
                ErrorKind::ConnectionFailed,
                format!("Could not reach the application service: {e}"),
            )),
        }
    }

    /// The registrations in force now.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether any appservice is registered (most servers have none: callers skip work).
    pub fn any(&self) -> bool {
        !self.registry().list.is_empty()
    }

    /// Refuse `user_id` to anyone but the appservice that claims it exclusively (`caller`,
    /// when the request is an appservice's).
    pub fn ensure_user_not_exclusive(&self, user_id: &UserId, caller: Option<&Registration>) -> Result<()> {
        let registry = self.registry();
        match registry.exclusive_owner(NamespaceKind::Users, user_id.as_str()) {
            Some(owner) if caller.is_none_or(|c| c.id != owner.id) => Err(Error::new(
                ruma::api::error::ErrorKind::Exclusive,
                "This user ID is reserved by an application service",
            )),
            _ => Ok(()),
        }
    }

    /// Refuse `alias` to anyone but the appservice that claims it exclusively.
    pub fn ensure_alias_not_exclusive(
        &self,
        alias: &RoomAliasId,
        caller: Option<&Registration>,
    ) -> Result<()> {
        let registry = self.registry();
        match registry.exclusive_owner(NamespaceKind::Aliases, alias.as_str()) {
            Some(owner) if caller.is_none_or(|c| c.id != owner.id) => Err(Error::new(
                ruma::api::error::ErrorKind::Exclusive,
                "This alias is reserved by an application service",
            )),
            _ => Ok(()),
        }
    }
}

/// What the audit log keeps of a registration: what it claims, never its tokens.
pub fn summary(registration: &Registration) -> JsonValue {
    let patterns = |list: &[appservice::Namespace]| -> Vec<JsonValue> {
        list.iter().map(|ns| json!({ "regex": ns.pattern, "exclusive": ns.exclusive })).collect()
    };
    json!({
        "id": registration.id,
        "url": registration.url.as_ref().map(ToString::to_string),
        "sender": registration.sender,
        "namespaces": {
            "users": patterns(&registration.users),
            "aliases": patterns(&registration.aliases),
            "rooms": patterns(&registration.rooms),
        },
        "rate_limited": registration.rate_limited,
        "protocols": registration.protocols,
        "receive_ephemeral": registration.receive_ephemeral,
        "org.matrix.msc3202": registration.msc3202,
        "io.element.msc4190": registration.msc4190,
    })
}

/// The body of `response`, refused past `limit` bytes.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer: {e}"))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("answered more than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `id` as one path segment (`#`, `:`, `@` and everything else outside the unreserved set
/// percent-encoded).
pub fn encode_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>().replace('+', "%20")
}
