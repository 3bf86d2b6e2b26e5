//! `RemoteKeys`: other servers' signing keys. Fetched from the server itself
//! (`/_matrix/key/v2/server`) or, when that fails and `trusted_servers` names notaries, from
//! them (`/_matrix/key/v2/query`, their signature checked too); each answer is checked
//! (`matrix::server_keys`), stored with its `valid_until_ts` and used until then. Also the
//! notary side: the keys we hold (or fetch) served re-signed by us. Owns `remote_server_keys`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{
    CanonicalJsonObject, OwnedServerName, ServerName, api::federation::authentication::XMatrix,
    serde::Base64, signatures::PublicKeyMap,
};
use serde_json::{Value as JsonValue, json};

use super::client::{FederationClient, refusal_error};
use crate::{
    Error, Result,
    matrix::server_keys::{ServerKeySet, check_key_response},
    service::{clock::Clock, server_keys::ServerKeys},
    storage::{
        KvStore, Table,
        locks::KeyedLocks,
        tables::{REMOTE_SERVER_KEYS, RemoteServerKeysRecord},
    },
};

pub struct RemoteKeys {
    table: Table<String, RemoteServerKeysRecord>,
    client: Arc<FederationClient>,
    own: Arc<ServerKeys>,
    trusted: Vec<OwnedServerName>,
    clock: Arc<dyn Clock>,
    /// Checked key sets by server, so a request's signature check does not re-read and
    /// re-check the stored answer.
    checked: Mutex<HashMap<OwnedServerName, ServerKeySet>>,
    /// When each server's keys were last fetched (or tried): requests naming an unknown
    /// key, or from a server that cannot be reached, do not each cause a fetch.
    attempts: Mutex<HashMap<OwnedServerName, u64>>,
    /// Held while a server's keys are being fetched.
    fetching: KeyedLocks<OwnedServerName>,
}

/// How soon keys held are fetched again for a key they do not list.
const REFETCH_AFTER_MS: u64 = 60_000;
/// How soon a failed fetch is tried again.
const RETRY_FAILED_AFTER_MS: u64 = 10_000;

impl RemoteKeys {
    pub fn new(
        store: &Arc<dyn KvStore>,
        client: Arc<FederationClient>,
        own: Arc<ServerKeys>,
        trusted: Vec<OwnedServerName>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            table: REMOTE_SERVER_KEYS.open(store),
            client,
            own,
            trusted,
            clock,
            checked: Mutex::new(HashMap::new()),
            attempts: Mutex::new(HashMap::new()),
            fetching: KeyedLocks::new(),
        }
    }

    /// The keys of `server` held now and still valid (our own always), without fetching.
    pub fn held(&self, server: &ServerName) -> Result<Option<ServerKeySet>> {
        if server == self.own.server_name() {
            return self.own.own_key_set().map(Some);
        }
        let now = self.clock.now_ms();
        if let Some(set) = self.checked.lock().unwrap_or_else(|p| p.into_inner()).get(server)
            && set.valid_until_ms >= now
        {
            return Ok(Some(set.clone()));
        }
        let Some(record) = self.table.get(&server.to_string())? else { return Ok(None) };
        if record.valid_until_ms < now {
            return Ok(None);
        }
        let response: JsonValue = serde_json::from_str(&record.response)
            .map_err(|e| Error::internal(format!("stored keys of {server}: {e}")))?;
        let set = check_key_response(server.as_str(), &response)
            .map_err(|e| Error::internal(format!("stored keys of {server}: {e}")))?;
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).insert(server.to_owned(), set.clone());
        Ok(Some(set))
    }

    /// The keys of `server`, fetched when none valid are held, when `key_id` is not among
    /// them, or when they expire before `minimum_valid_until_ms` — but not again within a
    /// minute of the last fetch when keys are held (then those are answered), nor within ten
    /// seconds of a failure, so requests naming unknown keys cannot each cause a fetch.
    pub async fn keys_of(
        &self,
        server: &ServerName,
        key_id: Option<&str>,
        minimum_valid_until_ms: u64,
    ) -> Result<ServerKeySet> {
        let suits = |set: &ServerKeySet| {
            key_id.is_none_or(|id| set.verify_keys.contains_key(id) || set.old_verify_keys.contains_key(id))
                && set.valid_until_ms >= minimum_valid_until_ms
        };
        if let Some(set) = self.held(server)?
            && suits(&set)
        {
            return Ok(set);
        }
        // One fetch of a server's keys at a time: a caller that comes while one is under way
        // waits for its outcome instead of taking the fetch in flight for a failed one.
        let _fetching = self.fetching.lock(&server.to_owned()).await;
        let now = self.clock.now_ms();
        let last_attempt = self.attempts.lock().unwrap_or_else(|p| p.into_inner()).get(server).copied();
        let recently = |within: u64| last_attempt.is_some_and(|at| now < at.saturating_add(within));
        if let Some(set) = self.held(server)? {
            if suits(&set) || recently(REFETCH_AFTER_MS) {
                return Ok(set);
            }
        } else if recently(RETRY_FAILED_AFTER_MS) {
            return Err(Error::Upstream(format!(
                "The signing keys of {server} could not be fetched a moment ago; not tried again yet"
            )));
        }
        self.attempts.lock().unwrap_or_else(|p| p.into_inner()).insert(server.to_owned(), now);
        self.fetch(server).await
    }

    /// Fetch `server`'s keys: from the server, then from each trusted notary.
    async fn fetch(&self, server: &ServerName) -> Result<ServerKeySet> {
        let mut reasons = Vec::new();
        match self.fetch_from_origin(server).await {
            Ok(set) => return Ok(set),
            Err(e) => reasons.push(format!("from {server}: {}", reason_of(&e))),
        }
        for notary in &self.trusted {
            if notary == server || notary == self.own.server_name() {
                continue;
            }
            match self.fetch_from_notary(notary, server).await {
                Ok(set) => return Ok(set),
                Err(e) => reasons.push(format!("from notary {notary}: {}", reason_of(&e))),
            }
        }
        Err(Error::Upstream(format!("Could not fetch the signing keys of {server}: {}", reasons.join("; "))))
    }

    async fn fetch_from_origin(&self, server: &ServerName) -> Result<ServerKeySet> {
        let answer = match self
            .client
            .request(server, http::Method::GET, "/_matrix/key/v2/server", None, false)
            .await?
        {
            Ok(json) => json,
            Err(refusal) => return Err(refusal_error(server, &refusal)),
        };
        self.store_checked(server, &answer)
    }

    async fn fetch_from_notary(&self, notary: &ServerName, server: &ServerName) -> Result<ServerKeySet> {
        let notary_keys = self.keys_of_origin_only(notary).await?;
        let body = json!({"server_keys": {server.as_str(): {}}});
        let answer = match self
            .client
            .request(notary, http::Method::POST, "/_matrix/key/v2/query", Some(&body), true)
            .await?
        {
            Ok(json) => json,
            Err(refusal) => return Err(refusal_error(notary, &refusal)),
        };
        let now = self.clock.now_ms();
        let entries = answer.get("server_keys").and_then(JsonValue::as_array).cloned().unwrap_or_default();
        let mut last = format!("{notary} returned no keys for {server}");
        for entry in entries {
            if entry.get("server_name").and_then(JsonValue::as_str) != Some(server.as_str()) {
                continue;
            }
            let notary_signed = notary_keys.verify_keys.iter().any(|(id, key)| {
                crate::matrix::keys::verify_signature(&entry, notary.as_str(), id, key).is_ok()
            });
            if !notary_signed {
                last = format!("{notary}'s answer for {server} is not signed by {notary}");
                continue;
            }
            match self.store_checked(server, &entry) {
                Ok(set) if set.valid_until_ms >= now => return Ok(set),
                Ok(_) => last = format!("{notary}'s keys for {server} have expired"),
                Err(e) => last = reason_of(&e),
            }
        }
        Err(Error::Upstream(last))
    }

    /// A notary's own keys, from the notary itself (never through another notary).
    async fn keys_of_origin_only(&self, notary: &ServerName) -> Result<ServerKeySet> {
        match self.held(notary)? {
            Some(set) => Ok(set),
            None => self.fetch_from_origin(notary).await,
        }
    }

    fn store_checked(&self, server: &ServerName, answer: &JsonValue) -> Result<ServerKeySet> {
        let set = check_key_response(server.as_str(), answer)
            .map_err(|e| Error::Upstream(format!("the keys of {server} do not check: {e}")))?;
        let record = RemoteServerKeysRecord {
            response: answer.to_string(),
            valid_until_ms: set.valid_until_ms,
            fetched_ms: self.clock.now_ms(),
        };
        self.table.insert(&server.to_string(), &record)?;
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).insert(server.to_owned(), set.clone());
        Ok(set)
    }

    /// The notary's answer for `server`: its key response as we hold or fetch it (ours for
    /// our own name), with our signature added.
    pub async fn notary_answer(
        &self,
        server: &ServerName,
        minimum_valid_until_ms: u64,
    ) -> Result<Vec<JsonValue>> {
        if server == self.own.server_name() {
            return Ok(vec![self.own.key_response()?]);
        }
        self.keys_of(server, None, minimum_valid_until_ms).await?;
        let Some(record) = self.table.get(&server.to_string())? else { return Ok(Vec::new()) };
        let mut object: CanonicalJsonObject = serde_json::from_str(&record.response)
            .map_err(|e| Error::internal(format!("stored keys of {server}: {e}")))?;
        self.own.sign(&mut object)?;
        Ok(vec![serde_json::to_value(object).map_err(|e| Error::internal(format!("notary answer: {e}")))?])
    }
}

impl RemoteKeys {
    /// Check an incoming request's X-Matrix signature (the origin's keys fetched before, by
    /// `keys_of`): the origin federated with, the request meant for this server, signed by a
    /// key of the origin valid now. Answers the origin; every failure is `401 M_UNAUTHORIZED`
    /// saying what was wrong (a refused origin `403`).
    pub fn verify_request(
        &self,
        x_matrix: &XMatrix,
        request: &http::Request<&[u8]>,
    ) -> Result<OwnedServerName> {
        let origin = &x_matrix.origin;
        self.client.check_server(origin)?;
        let ours = self.own.server_name();
        if let Some(destination) = &x_matrix.destination
            && destination != ours
        {
            return Err(unauthorized(format!(
                "The request is signed for destination {destination}, and this server is {ours}"
            )));
        }
        let Some(keys) = self.held(origin)? else {
            return Err(unauthorized(format!("The signing keys of {origin} could not be fetched")));
        };
        let Some(public_key) = keys.key_at(x_matrix.key.as_str(), self.clock.now_ms()) else {
            return Err(unauthorized(format!("{} is not a signing key of {origin} valid now", x_matrix.key)));
        };
        let public_key = Base64::parse(public_key)
            .map_err(|_| unauthorized(format!("The key {} of {origin} is not base64", x_matrix.key)))?;
        let map: PublicKeyMap =
            [(origin.to_string(), [(x_matrix.key.to_string(), public_key)].into())].into();
        x_matrix
            .verify_http_request(request, ours, &map)
            .map_err(|e| unauthorized(format!("The X-Matrix signature of {origin} does not verify: {e}")))?;
        Ok(origin.clone())
    }
}

fn unauthorized(message: String) -> Error {
    Error::new(ruma::api::error::ErrorKind::Unauthorized, message)
}

fn reason_of(error: &Error) -> String {
    match error {
        Error::Matrix { message, .. } | Error::Upstream(message) => message.clone(),
        other => other.to_string(),
    }
}
