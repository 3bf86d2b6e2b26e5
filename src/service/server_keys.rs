//! This server's ed25519 signing key: generated on first start, persisted, used to sign
//! every event the server creates and every federation request it sends, published at
//! `/_matrix/key/v2/server`, and replaced by `conduit rotate-signing-key` (the replaced key is
//! published on under `old_verify_keys` with when it stopped being used). Owns the
//! `server_signing_keys` and `old_signing_keys` tables.

use std::sync::{Arc, Mutex, RwLock};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD},
};
use rand::{Rng, distributions::Alphanumeric};
use ruma::{CanonicalJsonObject, OwnedServerName, ServerName, signatures::Ed25519KeyPair};
use serde_json::{Value as JsonValue, json};

use super::clock::Clock;
use crate::{
    Error, Result,
    matrix::server_keys::ServerKeySet,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        kv::KeyRange,
        tables::{OLD_SIGNING_KEYS, OldSigningKeyRecord, SERVER_SIGNING_KEYS, SigningKeyRecord},
    },
};

const CURRENT: &str = "current";

/// How long other servers may keep our key response before asking again.
pub const KEY_RESPONSE_VALIDITY_MS: u64 = 24 * 3600 * 1000;

pub struct ServerKeys {
    server_name: OwnedServerName,
    store: Arc<dyn KvStore>,
    current: Table<String, SigningKeyRecord>,
    old: Table<String, OldSigningKeyRecord>,
    clock: Arc<dyn Clock>,
    /// The key pair in use. A rotation (an operator command, rare) leaks the replaced pair's
    /// few bytes, so that signers can hold a plain reference while a rotation happens.
    key_pair: RwLock<&'static Ed25519KeyPair>,
    rotation: Mutex<()>,
}

fn new_record(now_ms: u64) -> SigningKeyRecord {
    let version: String = rand::thread_rng().sample_iter(Alphanumeric).take(8).map(char::from).collect();
    let der = Ed25519KeyPair::generate();
    SigningKeyRecord { version, pkcs8: STANDARD.encode(der.as_slice()), created_ms: now_ms }
}

fn key_pair_of(record: &SigningKeyRecord) -> Result<&'static Ed25519KeyPair> {
    let der =
        STANDARD.decode(&record.pkcs8).map_err(|e| Error::internal(format!("stored signing key: {e}")))?;
    let pair = Ed25519KeyPair::from_der(&der, record.version.clone())
        .map_err(|e| Error::internal(format!("stored signing key: {e}")))?;
    Ok(Box::leak(Box::new(pair)))
}

impl ServerKeys {
    /// Load the current key pair, creating and storing one if this is the first start.
    pub fn load_or_create(
        store: &Arc<dyn KvStore>,
        server_name: OwnedServerName,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let current = SERVER_SIGNING_KEYS.open(store);
        let record = match current.get(&CURRENT.to_owned())? {
            Some(record) => record,
            None => {
                let record = new_record(clock.now_ms());
                current.insert(&CURRENT.to_owned(), &record)?;
                tracing::info!(key_id = %format!("ed25519:{}", record.version), "generated the server signing key");
                record
            }
        };
        Ok(Self {
            server_name,
            store: Arc::clone(store),
            current,
            old: OLD_SIGNING_KEYS.open(store),
            clock,
            key_pair: RwLock::new(key_pair_of(&record)?),
            rotation: Mutex::new(()),
        })
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// The key pair in use now.
    pub fn key_pair(&self) -> &Ed25519KeyPair {
        *self.key_pair.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The ID of the key in use (`ed25519:<version>`).
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.key_pair().version())
    }

    fn public_key_of(pair: &Ed25519KeyPair) -> String {
        STANDARD_NO_PAD.encode(pair.public_key())
    }

    /// Replace the signing key: a new pair signs from now on, and the old one is published
    /// under `old_verify_keys` with the current time as its `expired_ts`. Answers the old and
    /// new key IDs.
    pub fn rotate(&self) -> Result<(String, String)> {
        let _rotating = self.rotation.lock().unwrap_or_else(|p| p.into_inner());
        let old_pair = self.key_pair();
        let now = self.clock.now_ms();
        let record = new_record(now);
        let new_pair = key_pair_of(&record)?;
        let old_id = format!("ed25519:{}", old_pair.version());
        let mut batch = WriteBatch::new();
        self.current.put(&mut batch, &CURRENT.to_owned(), &record)?;
        self.old.put(
            &mut batch,
            &old_id,
            &OldSigningKeyRecord { public_key: Self::public_key_of(old_pair), expired_ms: now },
        )?;
        self.store.write(batch)?;
        *self.key_pair.write().unwrap_or_else(|p| p.into_inner()) = new_pair;
        let new_id = format!("ed25519:{}", record.version);
        tracing::info!(old = %old_id, new = %new_id, "rotated the server signing key");
        Ok((old_id, new_id))
    }

    fn old_keys(&self) -> Result<Vec<(String, OldSigningKeyRecord)>> {
        self.old.scan(KeyRange::all(), Direction::Forward)?.map(|row| Ok(row?)).collect()
    }

    /// Sign `object` as this server (its `signatures` gets ours added).
    pub fn sign(&self, object: &mut CanonicalJsonObject) -> Result<()> {
        ruma::signatures::sign_json(self.server_name.as_str(), self.key_pair(), object)
            .map_err(|e| Error::internal(format!("signing JSON: {e}")))
    }

    /// Our key response (`GET /_matrix/key/v2/server`), signed, valid for a day.
    pub fn key_response(&self) -> Result<JsonValue> {
        let pair = self.key_pair();
        let mut old = serde_json::Map::new();
        for (id, record) in self.old_keys()? {
            old.insert(id, json!({"key": record.public_key, "expired_ts": record.expired_ms}));
        }
        let body = json!({
            "server_name": self.server_name,
            "valid_until_ts": self.clock.now_ms() + KEY_RESPONSE_VALIDITY_MS,
            "verify_keys": {format!("ed25519:{}", pair.version()): {"key": Self::public_key_of(pair)}},
            "old_verify_keys": old,
        });
        let mut object: CanonicalJsonObject =
            serde_json::from_value(body).map_err(|e| Error::internal(format!("key response: {e}")))?;
        self.sign(&mut object)?;
        serde_json::to_value(object).map_err(|e| Error::internal(format!("key response: {e}")))
    }

    /// Our own keys as a key set, for checking our own signatures.
    pub fn own_key_set(&self) -> Result<ServerKeySet> {
        let pair = self.key_pair();
        Ok(ServerKeySet {
            valid_until_ms: u64::MAX,
            verify_keys: [(format!("ed25519:{}", pair.version()), Self::public_key_of(pair))].into(),
            old_verify_keys: self
                .old_keys()?
                .into_iter()
                .map(|(id, record)| (id, (record.public_key, record.expired_ms)))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        matrix::server_keys::check_key_response,
        service::clock::ManualClock,
        storage::{memory::MemoryStore, tables::ALL_TABLES},
    };

    #[test]
    fn rotation_publishes_the_old_key_as_expired_and_survives_a_reload() {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(ALL_TABLES));
        let clock = Arc::new(ManualClock::new());
        let name: OwnedServerName = "example.org".try_into().unwrap();
        let keys = ServerKeys::load_or_create(&store, name.clone(), clock.clone()).unwrap();
        let first = keys.key_id();
        let response = keys.key_response().unwrap();
        let set = check_key_response("example.org", &response).unwrap();
        assert!(set.verify_keys.contains_key(&first) && set.old_verify_keys.is_empty());

        clock.advance_ms(5_000);
        let (old, new) = keys.rotate().unwrap();
        assert_eq!(old, first);
        assert_ne!(new, first);
        assert_eq!(keys.key_id(), new);
        let set = check_key_response("example.org", &keys.key_response().unwrap()).unwrap();
        assert!(set.verify_keys.contains_key(&new) && !set.verify_keys.contains_key(&first));
        let (_, expired) = &set.old_verify_keys[&first];
        assert_eq!(*expired, clock.now_ms());

        let reloaded = ServerKeys::load_or_create(&store, name, clock).unwrap();
        assert_eq!(reloaded.key_id(), new);
        assert!(reloaded.own_key_set().unwrap().old_verify_keys.contains_key(&first));
    }
}
