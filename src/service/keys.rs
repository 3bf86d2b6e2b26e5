//! End-to-end encryption keys of local users: device keys, one-time and fallback keys,
//! cross-signing keys and the signatures users add to each other's keys, and the device-list
//! change feed that tells room mates to re-fetch keys. Owns the `device_keys`,
//! `one_time_keys`, `fallback_keys`, `cross_signing_keys`, `key_signatures`,
//! `device_list_changes` and `device_list_latest` tables.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::{Map, Value as JsonValue, json, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    matrix::keys as key_rules,
    service::stream::{Change, Stream},
    storage::transaction,
    storage::{
        Direction, Durability, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{
            CROSS_SIGNING_KEYS, DEVICE_KEYS, DEVICE_LIST_CHANGES, DEVICE_LIST_LATEST, FALLBACK_KEYS,
            FallbackKeyRecord, KEY_SIGNATURES, ONE_TIME_KEYS,
        },
    },
};

pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// Most one-time keys one device may hold; more is a client bug or abuse.
const MAX_ONE_TIME_KEYS: usize = 10_000;

/// Keys one device uploads in one request.
pub struct Upload {
    pub device_keys: Option<JsonValue>,
    pub one_time_keys: BTreeMap<String, JsonValue>,
    pub fallback_keys: BTreeMap<String, JsonValue>,
}

/// Keys handed out by a claim: user → device → key ID → key.
pub type ClaimedKeys = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<String, JsonValue>>>;

/// A user's cross-signing keys as one upload carries them.
#[derive(Default)]
pub struct CrossSigningUpload {
    pub master: Option<JsonValue>,
    pub self_signing: Option<JsonValue>,
    pub user_signing: Option<JsonValue>,
}

/// The answer to a key query.
#[derive(Default)]
pub struct QueryResult {
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, JsonValue>>,
    pub master_keys: BTreeMap<OwnedUserId, JsonValue>,
    pub self_signing_keys: BTreeMap<OwnedUserId, JsonValue>,
    pub user_signing_keys: BTreeMap<OwnedUserId, JsonValue>,
}

pub struct Keys {
    device_keys: Table<(OwnedUserId, OwnedDeviceId), Box<RawJsonValue>>,
    one_time_keys: Table<(OwnedUserId, OwnedDeviceId, String), Box<RawJsonValue>>,
    fallback_keys: Table<(OwnedUserId, OwnedDeviceId, String), FallbackKeyRecord>,
    cross_signing: Table<(OwnedUserId, String), Box<RawJsonValue>>,
    signatures: Table<(OwnedUserId, String, OwnedUserId, String), String>,
    changes: Table<u64, OwnedUserId>,
    latest_change: Table<OwnedUserId, u64>,
    stream: Arc<Stream>,
    store: Arc<dyn KvStore>,
}

fn parse_raw(raw: &RawJsonValue) -> Result<JsonValue> {
    serde_json::from_str(raw.get()).map_err(|e| Error::internal(format!("stored key: {e}")))
}

fn to_raw(value: &JsonValue) -> Result<Box<RawJsonValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::internal(format!("serialising key: {e}")))
}

impl Keys {
    pub fn new(store: &Arc<dyn KvStore>, stream: Arc<Stream>) -> Self {
        Self {
            device_keys: DEVICE_KEYS.open(store),
            one_time_keys: ONE_TIME_KEYS.open(store),
            fallback_keys: FALLBACK_KEYS.open(store),
            cross_signing: CROSS_SIGNING_KEYS.open(store),
            signatures: KEY_SIGNATURES.open(store),
            changes: DEVICE_LIST_CHANGES.open(store),
            latest_change: DEVICE_LIST_LATEST.open(store),
            stream,
            store: Arc::clone(store),
        }
    }

    // ---- device keys, one-time and fallback keys ----

    /// `POST /keys/upload` for one device. Device keys must name this user and device and
    /// have the spec's shape; as Synapse, the server stores them without checking the
    /// device's signature (clients check it, and some clients and test fixtures upload keys
    /// a strict server would refuse). New keys replace the device's old ones, and room mates
    /// are told to re-fetch. Returns the device's one-time key counts.
    pub fn upload(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        upload: Upload,
    ) -> Result<BTreeMap<String, u64>> {
        let user = user_id.to_owned();
        let device = device_id.to_owned();
        let mut batch = WriteBatch::new();
        let mut device_list_changed = false;
        if let Some(keys) = &upload.device_keys {
            key_rules::device_keys_shape(keys).map_err(Error::bad_json)?;
            if keys.get("user_id").and_then(JsonValue::as_str) != Some(user_id.as_str())
                || keys.get("device_id").and_then(JsonValue::as_str) != Some(device_id.as_str())
            {
                return Err(Error::bad_json("Device keys must name this user and device"));
            }
            let existing = self.device_keys.get(&(user.clone(), device.clone()))?;
            if existing.map(|e| parse_raw(&e)).transpose()?.as_ref() != Some(keys) {
                self.device_keys.put(&mut batch, &(user.clone(), device.clone()), &to_raw(keys)?)?;
                device_list_changed = true;
            }
        }
        let existing_count =
            self.one_time_keys.scan_prefix(&(user.clone(), device.clone()), Direction::Forward)?.count();
        if existing_count + upload.one_time_keys.len() > MAX_ONE_TIME_KEYS {
            return Err(Error::invalid_param("Too many one-time keys"));
        }
        for (key_id, key) in &upload.one_time_keys {
            check_key_id(key_id)?;
            key_rules::one_time_key_shape(key).map_err(|e| Error::bad_json(format!("{key_id}: {e}")))?;
            let row = (user.clone(), device.clone(), key_id.clone());
            match self.one_time_keys.get(&row)? {
                Some(existing) if parse_raw(&existing)? != *key => {
                    return Err(Error::invalid_param(format!(
                        "One-time key {key_id} already exists with other content"
                    )));
                }
                Some(_) => {}
                None => self.one_time_keys.put(&mut batch, &row, &to_raw(key)?)?,
            }
        }
        for (key_id, key) in &upload.fallback_keys {
            let algorithm = check_key_id(key_id)?;
            key_rules::one_time_key_shape(key).map_err(|e| Error::bad_json(format!("{key_id}: {e}")))?;
            let row = (user.clone(), device.clone(), algorithm.to_owned());
            let same = self
                .fallback_keys
                .get(&row)?
                .is_some_and(|f| f.key_id == *key_id && parse_raw(&f.key).is_ok_and(|k| k == *key));
            if !same {
                let record = FallbackKeyRecord { key_id: key_id.clone(), key: to_raw(key)?, used: false };
                self.fallback_keys.put(&mut batch, &row, &record)?;
            }
        }
        self.store.write(batch)?;
        if device_list_changed {
            self.device_list_changed(user_id)?;
        }
        self.one_time_key_counts(user_id, device_id)
    }

    /// Unclaimed one-time keys of a device, per algorithm.
    pub fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        for row in
            self.one_time_keys.scan_prefix(&(user_id.to_owned(), device_id.to_owned()), Direction::Forward)?
        {
            let ((_, _, key_id), _) = row?;
            let algorithm = key_id.split_once(':').map_or(key_id.as_str(), |(a, _)| a).to_owned();
            *counts.entry(algorithm).or_default() += 1;
        }
        Ok(counts)
    }

    /// Algorithms for which the device has a fallback key not yet handed out.
    pub fn unused_fallback_types(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<Vec<String>> {
        let mut types = Vec::new();
        for row in
            self.fallback_keys.scan_prefix(&(user_id.to_owned(), device_id.to_owned()), Direction::Forward)?
        {
            let ((_, _, algorithm), record) = row?;
            if !record.used {
                types.push(algorithm);
            }
        }
        Ok(types)
    }

    /// `POST /keys/claim`: one key per requested device and algorithm, removed as it is
    /// handed out; the fallback key (marked used, but kept) when none are left.
    pub fn claim(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    ) -> Result<ClaimedKeys> {
        // One transaction: a key read here is deleted only if no other claim took it
        // first (the commit checks the rows read), so no key is handed out twice, within
        // this process or across processes sharing the database.
        transaction::<_, Error>(self.store.as_ref(), Durability::Synced, |tx| {
            let mut claimed: ClaimedKeys = BTreeMap::new();
            for (user_id, devices) in wanted {
                for (device_id, algorithm) in devices {
                    let mut prefix = (user_id.clone(), device_id.clone()).to_key_bytes();
                    // Key IDs are `<algorithm>:<id>`; a string's bytes are escaped only for
                    // NUL, which no algorithm name holds.
                    prefix.extend_from_slice(format!("{algorithm}:").as_bytes());
                    let found = self
                        .one_time_keys
                        .scan_in(tx, KeyRange::prefix(prefix), Direction::Forward)?
                        .into_iter()
                        .next();
                    let (key_id, key) = match found {
                        Some((row, key)) => {
                            self.one_time_keys.delete_in(tx, &row);
                            (row.2, parse_raw(&key)?)
                        }
                        None => {
                            let row = (user_id.clone(), device_id.clone(), algorithm.clone());
                            let Some(mut fallback) = self.fallback_keys.get_in(tx, &row)? else { continue };
                            let key = parse_raw(&fallback.key)?;
                            let key_id = fallback.key_id.clone();
                            if !fallback.used {
                                fallback.used = true;
                                self.fallback_keys.put_in(tx, &row, &fallback)?;
                            }
                            (key_id, key)
                        }
                    };
                    claimed
                        .entry(user_id.clone())
                        .or_default()
                        .entry(device_id.clone())
                        .or_default()
                        .insert(key_id, key);
                }
            }
            Ok((claimed, true))
        })
    }

    // ---- queries ----

    /// `POST /keys/query` over local users: device keys (all devices when none are named)
    /// and cross-signing keys, with every stored signature merged in. The user-signing key
    /// goes only to its owner.
    pub fn query(
        &self,
        requester: &UserId,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
        display_names: impl Fn(&UserId, &ruma::DeviceId) -> Option<String>,
    ) -> Result<QueryResult> {
        let mut result = QueryResult::default();
        for (user_id, devices) in wanted {
            let mut found = BTreeMap::new();
            for row in self.device_keys.scan_prefix(user_id, Direction::Forward)? {
                let ((_, device_id), raw) = row?;
                if !devices.is_empty() && !devices.contains(&device_id) {
                    continue;
                }
                let mut keys = parse_raw(&raw)?;
                self.merge_stored_signatures(user_id, device_id.as_str(), &mut keys)?;
                if let Some(name) = display_names(user_id, &device_id) {
                    keys["unsigned"] = json!({ "device_display_name": name });
                }
                found.insert(device_id, keys);
            }
            result.device_keys.insert(user_id.clone(), found);
            for (usage, target) in [
                (MASTER, &mut result.master_keys),
                (SELF_SIGNING, &mut result.self_signing_keys),
                (USER_SIGNING, &mut result.user_signing_keys),
            ] {
                if usage == USER_SIGNING && user_id != requester {
                    continue;
                }
                if let Some(mut key) = self.cross_signing_key(user_id, usage)? {
                    if let Some((key_id, _)) = key_rules::cross_signing_key(&key) {
                        let public = key_id.trim_start_matches("ed25519:").to_owned();
                        self.merge_stored_signatures(user_id, &public, &mut key)?;
                    }
                    target.insert(user_id.clone(), key);
                }
            }
        }
        Ok(result)
    }

    fn merge_stored_signatures(&self, user_id: &UserId, target: &str, object: &mut JsonValue) -> Result<()> {
        let mut extra: Map<String, JsonValue> = Map::new();
        for row in
            self.signatures.scan_prefix(&(user_id.to_owned(), target.to_owned()), Direction::Forward)?
        {
            let ((_, _, signer, key_id), signature) = row?;
            let entry = extra.entry(signer.to_string()).or_insert_with(|| JsonValue::Object(Map::new()));
            entry[key_id] = JsonValue::String(signature);
        }
        key_rules::merge_signatures(object, &extra);
        Ok(())
    }

    /// A user's cross-signing key of one usage, as uploaded.
    pub fn cross_signing_key(&self, user_id: &UserId, usage: &str) -> Result<Option<JsonValue>> {
        self.cross_signing
            .get(&(user_id.to_owned(), usage.to_owned()))?
            .map(|raw| parse_raw(&raw))
            .transpose()
    }

    /// A device's keys as uploaded (without added signatures).
    pub fn device_keys(&self, user_id: &UserId, device_id: &ruma::DeviceId) -> Result<Option<JsonValue>> {
        self.device_keys
            .get(&(user_id.to_owned(), device_id.to_owned()))?
            .map(|raw| parse_raw(&raw))
            .transpose()
    }

    // ---- cross-signing ----

    /// Whether an upload would replace an existing master key (which needs the user to
    /// authenticate again; a first upload, or the same keys again, does not).
    pub fn upload_replaces_master(&self, user_id: &UserId, upload: &CrossSigningUpload) -> Result<bool> {
        let Some(existing) = self.cross_signing_key(user_id, MASTER)? else { return Ok(false) };
        Ok(match &upload.master {
            Some(new) => new.get("keys") != existing.get("keys"),
            // Only sub-keys: they hang off the existing master key.
            None => {
                let same = |usage: &str, new: &Option<JsonValue>| -> Result<bool> {
                    Ok(match new {
                        None => true,
                        Some(new) => self
                            .cross_signing_key(user_id, usage)?
                            .is_some_and(|old| old.get("keys") == new.get("keys")),
                    })
                };
                !(same(SELF_SIGNING, &upload.self_signing)? && same(USER_SIGNING, &upload.user_signing)?)
            }
        })
    }

    /// `POST /keys/device_signing/upload` after any authentication: check and store the keys.
    /// An upload of no keys changes nothing and succeeds, as on Synapse (every key in the
    /// request is optional): Element sends one first to learn whether a password is needed.
    /// With `audit`, the upload is an identity reset and is recorded in its batch.
    pub fn upload_cross_signing(
        &self,
        user_id: &UserId,
        upload: CrossSigningUpload,
        audit: Option<(&super::audit::Audit, &super::context::RequestContext)>,
    ) -> Result<()> {
        if upload.master.is_none() && upload.self_signing.is_none() && upload.user_signing.is_none() {
            return Ok(());
        }
        let master = match &upload.master {
            Some(master) => master.clone(),
            None => self
                .cross_signing_key(user_id, MASTER)?
                .ok_or_else(|| Error::invalid_param("A master key must be uploaded first"))?,
        };
        check_cross_signing_key(user_id, &master, MASTER)?;
        let (master_id, master_public) = key_rules::cross_signing_key(&master)
            .ok_or_else(|| Error::invalid_param("The master key must hold one ed25519 key"))?;
        let mut batch = WriteBatch::new();
        for (usage, key) in [(SELF_SIGNING, &upload.self_signing), (USER_SIGNING, &upload.user_signing)] {
            let Some(key) = key else { continue };
            check_cross_signing_key(user_id, key, usage)?;
            key_rules::verify_signature(key, user_id.as_str(), &master_id, &master_public).map_err(|e| {
                Error::invalid_param(format!("The {usage} key must be signed by the master key: {e}"))
            })?;
            self.cross_signing.put(&mut batch, &(user_id.to_owned(), usage.to_owned()), &to_raw(key)?)?;
        }
        if let Some(master) = &upload.master {
            self.cross_signing.put(&mut batch, &(user_id.to_owned(), MASTER.to_owned()), &to_raw(master)?)?;
        }
        let staged = match audit {
            Some((audit, context)) => {
                let entry = super::audit::Entry::success("keys.cross_signing.reset")
                    .target(user_id)
                    .params(serde_json::json!({ "master_key_id": master_id }));
                Some(audit.stage(&mut batch, context, entry)?)
            }
            None => None,
        };
        self.store.write(batch)?;
        if let Some(staged) = staged {
            staged.committed();
        }
        self.device_list_changed(user_id)
    }

    /// `POST /keys/signatures/upload`: for each signed object, check the requester's new
    /// signatures against the key that made them and store them. Returns failures per
    /// user and key.
    pub fn upload_signatures(
        &self,
        signer: &UserId,
        signed: BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>>> {
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, JsonValue>> = BTreeMap::new();
        let mut changed: BTreeSet<OwnedUserId> = BTreeSet::new();
        let mut batch = WriteBatch::new();
        for (target_user, objects) in signed {
            for (target_key, object) in objects {
                match self.check_signatures(signer, &target_user, &target_key, &object) {
                    Ok(accepted) => {
                        for (key_id, signature) in accepted {
                            let row = (target_user.clone(), target_key.clone(), signer.to_owned(), key_id);
                            self.signatures.put(&mut batch, &row, &signature)?;
                        }
                        changed.insert(target_user.clone());
                    }
                    Err(reason) => {
                        failures
                            .entry(target_user.clone())
                            .or_default()
                            .insert(target_key, json!({ "errcode": "M_INVALID_SIGNATURE", "error": reason }));
                    }
                }
            }
        }
        self.store.write(batch)?;
        for user in changed {
            self.device_list_changed(&user)?;
        }
        Ok(failures)
    }

    /// The requester's signatures on one object that verify, as (key ID, signature), or why
    /// none may be stored.
    fn check_signatures(
        &self,
        signer: &UserId,
        target_user: &UserId,
        target_key: &str,
        object: &JsonValue,
    ) -> std::result::Result<Vec<(String, String)>, String> {
        let storage = |e: Error| e.to_string();
        // What is being signed: a device of the target user, or one of their cross-signing keys.
        let target = match self.device_keys(target_user, target_key.into()).map_err(storage)? {
            Some(keys) => keys,
            None => [MASTER, SELF_SIGNING, USER_SIGNING]
                .into_iter()
                .filter_map(|usage| self.cross_signing_key(target_user, usage).ok().flatten())
                .find(|key| {
                    key_rules::cross_signing_key(key)
                        .is_some_and(|(id, _)| id == format!("ed25519:{target_key}"))
                })
                .ok_or_else(|| format!("No key {target_key} of {target_user}"))?,
        };
        // The object must be the stored key, apart from signatures and unsigned data.
        let strip = |v: &JsonValue| {
            let mut v = v.clone();
            if let Some(map) = v.as_object_mut() {
                map.remove("signatures");
                map.remove("unsigned");
            }
            v
        };
        if strip(object) != strip(&target) {
            return Err("The signed object is not the stored key".to_owned());
        }
        let signatures = object
            .get("signatures")
            .and_then(|s| s.get(signer.as_str()))
            .and_then(JsonValue::as_object)
            .ok_or_else(|| "No signature by the uploader".to_owned())?;
        let mut accepted = Vec::new();
        for (key_id, signature) in signatures {
            let Some(signature) = signature.as_str() else { continue };
            let public = self.signing_key_of(signer, key_id).map_err(storage)?;
            let Some(public) = public else { continue };
            let mut single = strip(object);
            single["signatures"] = json!({ signer.as_str(): { key_id: signature } });
            key_rules::verify_signature(&single, signer.as_str(), key_id, &public)?;
            accepted.push((key_id.clone(), signature.to_owned()));
        }
        if accepted.is_empty() {
            return Err("No signature by a known key of the uploader".to_owned());
        }
        Ok(accepted)
    }

    /// The public ed25519 key behind `signer`'s key ID: one of their devices or
    /// cross-signing keys.
    fn signing_key_of(&self, signer: &UserId, key_id: &str) -> Result<Option<String>> {
        let Some(name) = key_id.strip_prefix("ed25519:") else { return Ok(None) };
        if let Some(keys) = self.device_keys(signer, name.into())? {
            return Ok(key_rules::device_ed25519(&keys, name));
        }
        for usage in [MASTER, SELF_SIGNING, USER_SIGNING] {
            if let Some(key) = self.cross_signing_key(signer, usage)?
                && let Some((id, public)) = key_rules::cross_signing_key(&key)
                && id == key_id
            {
                return Ok(Some(public));
            }
        }
        Ok(None)
    }

    // ---- device lifecycle and the change feed ----

    /// Queue removal of everything a deleted device held: its keys, one-time and fallback
    /// keys, and signatures on it. The caller announces the change after committing.
    pub fn remove_device_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<()> {
        let device = (user_id.to_owned(), device_id.to_owned());
        self.device_keys.delete(batch, &device);
        for row in self.one_time_keys.scan_prefix(&device, Direction::Forward)? {
            self.one_time_keys.delete(batch, &row?.0);
        }
        for row in self.fallback_keys.scan_prefix(&device, Direction::Forward)? {
            self.fallback_keys.delete(batch, &row?.0);
        }
        let target = (user_id.to_owned(), device_id.as_str().to_owned());
        for row in self.signatures.scan_prefix(&target, Direction::Forward)? {
            self.signatures.delete(batch, &row?.0);
        }
        Ok(())
    }

    /// Record that a user's devices or cross-signing keys changed, for room mates' syncs.
    pub fn device_list_changed(&self, user_id: &UserId) -> Result<()> {
        let user = user_id.to_owned();
        let previous = self.latest_change.get(&user)?;
        let reservation = self.stream.reserve()?;
        let position = reservation.position;
        let mut batch = WriteBatch::new();
        if let Some(previous) = previous {
            self.changes.delete(&mut batch, &previous);
        }
        self.changes.put(&mut batch, &position, &user)?;
        self.latest_change.put(&mut batch, &user, &position)?;
        self.store.write(batch)?;
        reservation.announce([Change::RoomMates(user.clone()), Change::User(user)]);
        Ok(())
    }

    /// Users whose device lists changed after `since` up to `upto`.
    pub fn changed_users(&self, since: u64, upto: u64) -> Result<Vec<OwnedUserId>> {
        Ok(self.changes_between(since, upto)?.into_iter().map(|(_, user)| user).collect())
    }

    /// The device-list changes after `since` up to `upto`, each with its stream position
    /// (only a user's latest change is kept).
    pub fn changes_between(&self, since: u64, upto: u64) -> Result<Vec<(u64, OwnedUserId)>> {
        let range = KeyRange::all().after(since.to_key_bytes()).up_to(upto.to_key_bytes());
        self.changes.scan(range, Direction::Forward)?.map(|row| row.map_err(Into::into)).collect()
    }
}

/// A one-time key ID is `<algorithm>:<key id>`; returns the algorithm.
fn check_key_id(key_id: &str) -> Result<&str> {
    match key_id.split_once(':') {
        Some((algorithm, id)) if !algorithm.is_empty() && !id.is_empty() => Ok(algorithm),
        _ => Err(Error::bad_json(format!("Invalid key ID {key_id:?}: expected <algorithm>:<key ID>"))),
    }
}

fn check_cross_signing_key(user_id: &UserId, key: &JsonValue, usage: &str) -> Result<()> {
    if key.get("user_id").and_then(JsonValue::as_str) != Some(user_id.as_str()) {
        return Err(Error::invalid_param(format!("The {usage} key must belong to the uploader")));
    }
    let usages = key.get("usage").and_then(JsonValue::as_array);
    if !usages.is_some_and(|u| u.iter().any(|x| x.as_str() == Some(usage))) {
        return Err(Error::invalid_param(format!("The {usage} key must have usage {usage}")));
    }
    if key_rules::cross_signing_key(key).is_none() {
        return Err(Error::invalid_param(format!("The {usage} key must hold one ed25519 key")));
    }
    Ok(())
}
